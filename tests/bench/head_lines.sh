# Sourced by run.sh and callgrind_hit.sh. head_lines [more names]: reads a response head as curl
# dumps it and prints its header lines, less the status line and what a bench target sets itself
# (Content-Length, Content-Type, Date, and any names given, `|`-separated): the head that
# CEILING-HEAD and STACK-CACHE-HEAD add from a file.
head_lines() {
    tr -d '\r' | sed 1d | grep -Eiv "^(content-length|content-type|date${1:+|$1}):|^\$"
}
