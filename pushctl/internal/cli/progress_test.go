package cli

import (
	"testing"
	"time"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/csvimport"
)

func TestImportStatus(t *testing.T) {
	p := csvimport.Progress{Sent: 45000, Malformed: 12, Bytes: 450}
	tests := []struct {
		terminal bool
		size     int64
		want     string
	}{
		{true, 1000, "[###########-------------]  45%  45,012 rows  15,004 rows/s  12 malformed"},
		{true, 0, "import: 45,012 rows  15,004 rows/s  12 malformed"}, // stdin: size unknown
		{false, 1000, "import: 45,012 rows  15,004 rows/s  12 malformed"},
	}
	for _, tt := range tests {
		if got := importStatus(p, tt.size, 3*time.Second, tt.terminal); got != tt.want {
			t.Errorf("importStatus(terminal=%v, size=%d):\n got %q\nwant %q", tt.terminal, tt.size, got, tt.want)
		}
	}
}

func TestWatchLine(t *testing.T) {
	running := progressAt(450, 1200, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING)
	scanning := progressAt(0, 0, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING)
	scanning.Progress.Eta = nil // audience size not known yet: counts, no percentage
	tests := []struct {
		j        *deliveryv1.Journey
		terminal bool
		want     string
	}{
		{running, true, "running  [###########-------------]  45%  sent 1,200  failed 2  excluded 5  1,234 msg/s  ETA 1m05s"},
		{running, false, "journey j-42: running  45%  sent 1,200  failed 2  excluded 5  1,234 msg/s  ETA 1m05s"},
		{scanning, true, "running  qualified 1,000  sent 0  failed 2  excluded 5  1,234 msg/s"},
	}
	for _, tt := range tests {
		if got := watchLine(tt.j, tt.terminal); got != tt.want {
			t.Errorf("watchLine(terminal=%v):\n got %q\nwant %q", tt.terminal, got, tt.want)
		}
	}
}
