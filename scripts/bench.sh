#!/usr/bin/env bash
# Runs the headline benchmarks of every part of pushmesh and prints a table
# (figure, target, ratio to the ceiling where one exists). Each benchmark's
# full output is kept in $OUT (default .pushmesh/bench) for the details.
#
#   ./scripts/bench.sh            # the standard sizes (about 10 minutes)
#   QUICK=1 ./scripts/bench.sh    # smaller sizes, for a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.pushmesh/bench}
mkdir -p "$OUT"
quick=${QUICK:-}

run() { # name, command...
	local name=$1
	shift
	echo "== $name: $*" >&2
	"$@" >"$OUT/$name.txt" 2>&1 || { echo "   failed; see $OUT/$name.txt" >&2; return 0; }
	grep -v '^DEBUG\|^DBG' "$OUT/$name.txt" | sed 's/^/   /' >&2
}

run emulator-apns go test -run '^$' -bench 'BenchmarkAPNs' -benchtime 3s ./emulator/apns/
run emulator-fcm go test -run '^$' -bench 'BenchmarkFCM' -benchtime 3s ./emulator/fcm/
if [ -n "$quick" ]; then
	run profilesvc go run ./profilesvc/cmd/profilebench -import-rows 200000 -audience-profiles 200000
	run trackingsvc go run ./trackingsvc/cmd/trackingbench -events 200000
	run deliverysvc go run ./deliverysvc/cmd/deliverybench -n 20000
	run journey go run ./deliverysvc/cmd/journeybench -profiles 20000
else
	run profilesvc go run ./profilesvc/cmd/profilebench
	run trackingsvc go run ./trackingsvc/cmd/trackingbench -events 1000000
	run deliverysvc go run ./deliverysvc/cmd/deliverybench
	run journey go run ./deliverysvc/cmd/journeybench -profiles 1000000
fi

# pick FILE REGEX: the first number after REGEX in FILE.
pick() { grep -v '^DEBUG\|^DBG' "$OUT/$1.txt" 2>/dev/null | grep -oP "$2\\s*\\K[0-9][0-9.,]*" | head -1 | tr -d , || true; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.3f", a / b }'; }

apns=$(grep -oP 'BenchmarkAPNsPush\S*.*?\K[0-9.]+(?= pushes/s)' "$OUT/emulator-apns.txt" | head -1 || true)
apnsCeil=$(grep -oP 'BenchmarkAPNsCeiling\S*.*?\K[0-9.]+(?= pushes/s)' "$OUT/emulator-apns.txt" | head -1 || true)
fcmRate=$(grep -oP 'BenchmarkFCMSendEach\S*.*?\K[0-9.]+(?= messages/s)' "$OUT/emulator-fcm.txt" | head -1 || true)
importRate=$(grep -oP '[0-9][0-9,]*(?= rows/s)' "$OUT/profilesvc.txt" | head -1 | tr -d , || true)
audRate=$(grep -oP '[0-9][0-9,]*(?= profiles/s)' "$OUT/profilesvc.txt" | head -1 | tr -d , || true)
ingest=$(grep -oP '= \K[0-9]+(?= events/s)' "$OUT/trackingsvc.txt" | head -1 || true)
metrics=$(grep -oP 'p99 \K\S+' "$OUT/trackingsvc.txt" | head -1 || true)
send=$(grep -oP 'deliverysvc Send → both emulators:\s+\K[0-9]+' "$OUT/deliverysvc.txt" | head -1 || true)
sendCeil=$(grep -oP 'mean \K[0-9]+' "$OUT/deliverysvc.txt" | head -1 || true)
journey=$(grep -oP 'journey notifications/s \(end to end\)\s+\K[0-9]+' "$OUT/journey.txt" | head -1 || true)
journeyRatio=$(pick journey 'ratio to the apns2 ceiling')
sendBest=$(pick deliverysvc 'ratio to the apns2 ceiling with [0-9]+ goroutines \([^)]*\):')
journeyBest=$(pick journey 'ratio to the apns2 ceiling with [0-9]+ at once')
rss=$(grep -oP 'VmHWM\)\s+\K.*' "$OUT/journey.txt" | head -1 || true)

printf '\n%-48s %14s %16s %8s\n' figure value target ratio
printf '%-48s %14s %16s %8s\n' "APNs emulator, apns2 pushes/s" "${apns:--}" "≥ 15,000" "$(ratio "$apns" "$apnsCeil")"
printf '%-48s %14s %16s %8s\n' "  bare HTTP/2 ceiling, same run" "${apnsCeil:--}" "" ""
printf '%-48s %14s %16s %8s\n' "FCM emulator, SendEach messages/s" "${fcmRate:--}" "" ""
printf '%-48s %14s %16s %8s\n' "profilesvc CRM import rows/s" "${importRate:--}" "≥ 100,000" ""
printf '%-48s %14s %16s %8s\n' "profilesvc audience profiles/s" "${audRate:--}" "≥ 300,000" ""
printf '%-48s %14s %16s %8s\n' "trackingsvc durable ingest events/s" "${ingest:--}" "≥ 200,000" ""
printf '%-48s %14s %16s %8s\n' "trackingsvc GetMetrics p99" "${metrics:--}" "≤ 50 ms" ""
printf '%-48s %14s %16s %8s\n' "deliverysvc Send notifications/s" "${send:--}" "≥ 10,000" "$(ratio "$send" "$sendCeil")"
printf '%-48s %14s %16s %8s\n' "  against the raw client's best concurrency" "" "" "${sendBest:--}"
printf '%-48s %14s %16s %8s\n' "journey end to end notifications/s" "${journey:--}" "≥ 10,000" "${journeyRatio:--}"
printf '%-48s %14s %16s %8s\n' "  against the raw client's best concurrency" "" "" "${journeyBest:--}"
printf '%-48s %14s %16s %8s\n' "journey peak RSS (deliverysvc process)" "${rss:--}" "≤ 256 MiB" ""
echo
echo "ratios are to the raw apns2 → emulator ceiling measured in the same run, with as many pushes at once"
echo "as the pipeline may have in flight, then with 256 (the raw client's best over loopback); details in $OUT/"
