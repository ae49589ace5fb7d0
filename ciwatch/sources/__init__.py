"""Where events come from: the hook spool, watched bare repositories, polled
remotes, cron schedules. Each source turns what it sees into Events and hands
them to the intake; none of them runs anything."""
