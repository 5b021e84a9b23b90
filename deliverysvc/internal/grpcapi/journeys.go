package grpcapi

import (
	"context"
	"log/slog"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/journey"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// JourneyServer implements JourneyService over journey.Manager.
type JourneyServer struct {
	deliveryv1.UnimplementedJourneyServiceServer
	Journeys *journey.Manager
	Log      *slog.Logger
	// MaxWatches bounds the WatchJourney streams open at once (0:
	// DefaultMaxWatchStreams; negative: no bound). A stream over it is
	// refused at its start with ResourceExhausted.
	MaxWatches int

	watches streamSlots
}

// DefaultMaxWatchStreams is JourneyServer.MaxWatches's default. Each watch
// polls its journey as often as every 50 ms while it runs, so watches cost
// CPU even when nothing changes; a few hundred cover every dashboard and
// CLI following a journey.
const DefaultMaxWatchStreams = 256

// PublishJourney validates, then stores and starts or dry-runs a journey.
func (s *JourneyServer) PublishJourney(ctx context.Context, req *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error) {
	j, dr, err := s.Journeys.Publish(ctx, journey.PublishInput{
		Journey: req.GetJourney(), DryRun: req.GetDryRun(), SampleSize: int(req.GetSampleSize()), RequestID: req.GetRequestId(),
	})
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.PublishJourneyResponse{Journey: j, DryRun: dr}, nil
}

// GetJourney returns a journey with its live progress.
func (s *JourneyServer) GetJourney(ctx context.Context, req *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
	j, err := s.Journeys.Get(ctx, req.GetJourneyId())
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.GetJourneyResponse{Journey: j}, nil
}

// ListJourneys lists journeys newest first.
func (s *JourneyServer) ListJourneys(ctx context.Context, req *deliveryv1.ListJourneysRequest) (*deliveryv1.ListJourneysResponse, error) {
	js, next, err := s.Journeys.List(ctx, int(req.GetPageSize()), req.GetPageToken(), req.GetStates())
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.ListJourneysResponse{Journeys: js, NextPageToken: next}, nil
}

// WatchJourney streams progress until the journey ends.
func (s *JourneyServer) WatchJourney(req *deliveryv1.WatchJourneyRequest, stream deliveryv1.JourneyService_WatchJourneyServer) error {
	ctx := stream.Context()
	limit := s.MaxWatches
	if limit == 0 {
		limit = DefaultMaxWatchStreams
	}
	if !s.watches.acquire(limit) {
		return Status(ctx, s.Log, tooManyStreams("WatchJourney", limit))
	}
	defer s.watches.release()
	// A watch never ends by itself while the journey runs (or waits for
	// its start): it ends when the service begins to shut down, which would
	// otherwise wait its whole timeout for it.
	ctx, cancel := grpcserver.EndOnShutdown(ctx)
	defer cancel()
	err := s.Journeys.Watch(ctx, req.GetJourneyId(), req.GetInterval().AsDuration(), func(j *deliveryv1.Journey) error {
		return stream.Send(&deliveryv1.WatchJourneyResponse{Journey: j})
	})
	return Status(ctx, s.Log, grpcserver.ShutdownStatus(ctx, err))
}

// CancelJourney stops a journey.
func (s *JourneyServer) CancelJourney(ctx context.Context, req *deliveryv1.CancelJourneyRequest) (*deliveryv1.CancelJourneyResponse, error) {
	j, err := s.Journeys.Cancel(ctx, req.GetJourneyId())
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.CancelJourneyResponse{Journey: j}, nil
}
