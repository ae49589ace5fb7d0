#!/bin/sh
# Counts the files of the project: the "build" of the example.
n=$(ls | wc -l)
echo "built: $n files"
