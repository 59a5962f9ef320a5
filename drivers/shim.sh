# The per-unit shim of the posix driver (POSIX sh; dash keeps it ~100 KiB).
#
# Usage: sh shim.sh STATUS_FILE TOKEN CWD COMMAND [ARG...]
# fd 0 on entry is the write end of the driver's report pipe (stdin proper is /dev/null).
#
# It runs COMMAND in the foreground (a background job would get SIGINT/SIGQUIT
# ignored), reports "PID START_TICKS" of the command's process on the pipe just
# before the exec, waits, then appends "TOKEN STATUS" to STATUS_FILE, where TOKEN
# names this start and STATUS is the shell's $? (<= 128: the exit code; > 128:
# signal STATUS-128 or that exit code, sh cannot tell which). The record is one
# appended line, written whole by one write: nothing is spawned for it and no
# file is truncated (the driver removes the file once it grows). The termination
# signals are trapped with a no-op, not ignored: the shim outlives a signal sent
# to the whole group, and the command still starts with default dispositions.

status=$1 token=$2
cd -- "$3" || exit 126
shift 3
exec 3>&0 </dev/null
trap : HUP INT QUIT PIPE ALRM TERM USR1 USR2
(
	# Field 22 of /proc/self/stat is the start time in clock ticks; the comm
	# field is the shell's own name, so splitting on blanks is safe here.
	read -r pid _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ ticks _ </proc/self/stat
	echo "$pid $ticks" >&3
	exec "$@" 3>&-
)
echo "$token $?" >>"$status"
