package grpcapi

import (
	"strconv"

	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
)

// filter validates a metrics/list filter and time range.
func filter(f *trackingv1.MetricsFilter, start, end *timestamppb.Timestamp) (store.Filter, error) {
	v := &fault.ValidationError{}
	out := store.Filter{JourneyID: f.GetJourneyId(), MessageID: f.GetMessageId(), AppID: f.GetAppId(), Platform: f.GetPlatform()}
	if _, ok := commonv1.Platform_name[int32(f.GetPlatform())]; !ok {
		v.Add("filter.platform", "unknown platform %d", f.GetPlatform())
	}
	if start != nil {
		if !start.IsValid() {
			v.Add("start_time", "not a valid timestamp")
		}
		out.From = start.AsTime()
	}
	if end != nil {
		if !end.IsValid() {
			v.Add("end_time", "not a valid timestamp")
		}
		out.To = end.AsTime()
	}
	if start != nil && end != nil && !out.To.After(out.From) {
		v.Add("end_time", "must be after start_time")
	}
	return out, v.Err()
}

func itoa(i int) string { return strconv.Itoa(i) }
