package render

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Count formats n with thousands separators: 1234567 is "1,234,567".
func Count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	first := len(s) % 3
	if first == 0 {
		first = 3
	}
	b.WriteString(s[:first])
	for i := first; i < len(s); i += 3 {
		b.WriteByte(',')
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

// Percent formats a ratio (0.1626) as a percentage with two decimals
// ("16.26%").
func Percent(ratio float64) string {
	if math.IsNaN(ratio) || math.IsInf(ratio, 0) {
		return "-"
	}
	return strconv.FormatFloat(ratio*100, 'f', 2, 64) + "%"
}

// Rate formats a per-second rate as a whole number with separators.
func Rate(perSecond float64, unit string) string {
	if math.IsNaN(perSecond) || math.IsInf(perSecond, 0) || perSecond < 0 {
		perSecond = 0
	}
	return Count(int64(math.Round(perSecond))) + " " + unit + "/s"
}

// Token shortens a push token so it can be told apart but never read in full:
// the first 6 and last 4 characters, "a1b2c3…f9e8" (real APNs and FCM tokens
// are 64 to 200 characters). Tokens under 20 characters keep a third.
func Token(tok string) string {
	const head, tail = 6, 4
	r := []rune(tok)
	switch {
	case len(r) == 0:
		return "-"
	case len(r) >= 2*(head+tail):
		return string(r[:head]) + "…" + string(r[len(r)-tail:])
	default:
		keep := len(r) / 3
		return string(r[:keep/2+keep%2]) + "…" + string(r[len(r)-keep/2:])
	}
}

// Time formats a timestamp in UTC, RFC 3339, or "-" when unset.
func Time(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// Duration formats d for people: "850ms", "12s", "3m05s", "2h10m".
func Duration(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + Duration(-d)
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int64(d.Round(time.Second)/time.Second))
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int64(d/time.Minute), int64(d%time.Minute/time.Second))
	default:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int64(d/time.Hour), int64(d%time.Hour/time.Minute))
	}
}

// ProtoDuration formats a protobuf duration, or "-" when unset.
func ProtoDuration(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	return Duration(d.AsDuration())
}

// Text returns s, or "-" when s is empty, so empty cells stay visible.
func Text(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
