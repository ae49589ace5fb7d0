"""Forges: commit statuses out (GitHub, Gitea, Forgejo, GitLab), webhooks in."""
