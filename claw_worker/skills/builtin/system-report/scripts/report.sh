#!/bin/sh
# Host report: uptime and load, memory and swap, disk use, busiest processes. Read-only.
set -u
echo "host: $(uname -n)  kernel: $(uname -sr)"
if [ -r /proc/uptime ]; then
    up=$(cut -d' ' -f1 /proc/uptime)
    up=${up%.*}
    echo "uptime: $((up / 86400))d $((up % 86400 / 3600))h $((up % 3600 / 60))m"
fi
if [ -r /proc/loadavg ]; then
    echo "load (1/5/15 min): $(cut -d' ' -f1-3 /proc/loadavg)  cpus: $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?')"
fi
if [ -r /proc/meminfo ]; then
    awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} /^SwapTotal:/ {st = $2} /^SwapFree:/ {sf = $2}
        END {
            if (t) printf "memory: %.1f GiB total, %.1f GiB available (%.0f%% used)\n", t / 1048576, a / 1048576, (t - a) * 100 / t
            if (st) printf "swap: %.1f GiB total, %.1f GiB used\n", st / 1048576, (st - sf) / 1048576
            else print "swap: none"
        }' /proc/meminfo
fi
echo
echo "disk:"
df -hP -x tmpfs -x devtmpfs 2>/dev/null || df -hP
echo
echo "busiest processes (CPU%):"
if top=$(ps -eo pid,pcpu,pmem,etime,comm --sort=-pcpu 2>/dev/null); then
    printf '%s\n' "$top" | head -n 8
else
    echo "  (ps is not installed or cannot sort here)"
fi
