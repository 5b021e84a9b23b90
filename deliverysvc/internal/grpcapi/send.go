package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// DeliveryServer implements deliveryv1.DeliveryServiceServer over the
// delivery pipeline.
type DeliveryServer struct {
	deliveryv1.UnimplementedDeliveryServiceServer
	Pipeline *delivery.Pipeline
	Log      *slog.Logger
	// MaxInFlightPerStream bounds the tokens one stream holds in the
	// pipeline (0: the pipeline's whole bound). A message holds its weight
	// until its results are written, so a client that stops reading holds
	// at most this much of what every other stream and journey share.
	MaxInFlightPerStream int64
	// StallTimeout ends a stream whose client has not taken a response for
	// this long (0: DefaultStallTimeout), giving back what its unread
	// results hold.
	StallTimeout time.Duration
	// MaxStreams bounds the Send streams open at once (0:
	// DefaultMaxSendStreams; negative: no bound). A stream over it is
	// refused at its start with ResourceExhausted.
	MaxStreams int

	streams streamSlots
}

// DefaultMaxSendStreams is DeliveryServer.MaxStreams's default. An open
// stream costs a goroutine and gRPC's buffers even while idle, and its
// results buffer and writer once it sends; a thousand leave room for many
// senders and keep what one client can make the process hold bounded.
const DefaultMaxSendStreams = 1000

// streamSlots counts the open streams of one kind against a bound.
type streamSlots struct{ open atomic.Int64 }

// acquire takes a slot unless limit are taken (limit < 0: no bound).
func (s *streamSlots) acquire(limit int) bool {
	if limit < 0 {
		s.open.Add(1)
		return true
	}
	for {
		n := s.open.Load()
		if n >= int64(limit) {
			return false
		}
		if s.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *streamSlots) release() { s.open.Add(-1) }

// tooManyStreams is the error a stream over its bound is refused with:
// ResourceExhausted, with a retry delay.
func tooManyStreams(kind string, limit int) error {
	return &fault.RetryAfterError{After: time.Second, Err: fmt.Errorf(
		"too many concurrent %s streams: this deliverysvc serves at most %d at once; reuse an open stream, close idle ones, or retry later", kind, limit)}
}

// DefaultStallTimeout is DeliveryServer.StallTimeout's default: far longer
// than any reader that is merely slow needs.
const DefaultStallTimeout = time.Minute

// maxResultsPerResponse bounds one SendResponse; under load the writer packs
// results together, at low load it sends each as soon as it is known.
const maxResultsPerResponse = 500

// Send implements deliveryv1.DeliveryServiceServer. The stream reads a batch,
// admits it into the pipeline (which blocks while the pipeline is full, so
// the next batch is only read when there is room), and a writer streams the
// results back. When the client closes its side, Send waits for every
// admitted message and ends. When the service begins to shut down, it stops
// reading, and ends with Unavailable once the messages it admitted have
// completed and their results are sent: a stream kept open between batches
// would otherwise hold the graceful stop for its whole timeout, and then be
// cut off with the others.
func (s *DeliveryServer) Send(stream deliveryv1.DeliveryService_SendServer) error {
	limit := s.MaxStreams
	if limit == 0 {
		limit = DefaultMaxSendStreams
	}
	if !s.streams.acquire(limit) {
		return Status(stream.Context(), s.Log, tooManyStreams("Send", limit))
	}
	defer s.streams.release()

	drain, stopDrain := grpcserver.EndOnShutdown(stream.Context())
	defer stopDrain()
	requests := newRequestReader(stream)
	defer requests.close()

	// Nothing more is allocated until the client sends its first batch: an
	// idle stream costs only its goroutines and gRPC's buffers.
	first, err := requests.next(stream.Context(), drain)
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return Status(stream.Context(), s.Log, err)
	}

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()

	// Small on purpose: results waiting for a slow reader hold pipeline
	// capacity, which is what slows the sender down.
	results := make(chan delivery.Result, 256)
	writeErr := make(chan error, 1)
	stallTimeout := s.StallTimeout
	if stallTimeout <= 0 {
		stallTimeout = DefaultStallTimeout
	}
	// stalled closes when a response has waited stallTimeout for the
	// client to take it (gRPC flow control: the client is not reading).
	stalled := make(chan struct{})
	var stallOnce sync.Once
	onStall := func() {
		stallOnce.Do(func() {
			close(stalled)
			cancel() // stop the session's pending work
		})
	}
	go func() {
		err := writeResults(stream, results, stallTimeout, onStall)
		if err != nil {
			cancel() // nobody reads: stop the session's pending work
		}
		writeErr <- err
	}()
	// The writer drains the channel until it is closed, even after the
	// client went away; once the client stalled, results are dropped
	// instead (they are recorded and remembered: a resend of the key gets
	// them), so the session gives back its weight and Close returns.
	session := s.Pipeline.OpenWith(ctx, func(r delivery.Result) {
		select {
		case results <- r:
		case <-stalled:
		}
	}, delivery.SessionOptions{MaxInFlight: s.MaxInFlightPerStream})

	var streamErr error
	for req := first; ; {
		if err := session.Submit(messages(req.GetMessages())); err != nil {
			// An unusable batch ends the stream with its error, after the
			// messages admitted before it have completed and been reported.
			streamErr = err
			break
		}
		req, err = requests.next(stream.Context(), drain)
		if errors.Is(err, io.EOF) {
			break
		}
		if errors.Is(err, errShuttingDown) {
			streamErr = err // what was admitted completes first
			break
		}
		if err != nil {
			// The client is gone: cancel what is still pending.
			streamErr = err
			cancel()
			break
		}
	}
	session.Close()
	close(results)
	werr := <-writeErr
	select {
	case <-stalled:
		streamErr = &fault.RetryAfterError{After: time.Second, Err: fmt.Errorf(
			"results not read for %s: the stream ended; its messages completed and are remembered, so resending a key whose outcome you did not read answers it without sending again", stallTimeout)}
	default:
	}
	switch {
	case streamErr != nil:
		return Status(stream.Context(), s.Log, streamErr)
	case werr != nil:
		return Status(stream.Context(), s.Log, werr)
	}
	return nil
}

// errShuttingDown ends a Send stream when the service begins to shut down.
var errShuttingDown = errors.New("deliverysvc is shutting down: the messages admitted on this stream completed and their results were sent; send the others on a new stream (their idempotency keys make a resend safe)")

// requestReader reads a Send stream's requests on a goroutine of its own,
// one when asked, so that waiting for the next batch can also end when the
// service begins to shut down. Reading only when asked keeps gRPC's flow
// control: the next batch is read when the pipeline had room for the last.
type requestReader struct {
	ask chan struct{}
	got chan recvResult
}

type recvResult struct {
	req *deliveryv1.SendRequest
	err error
}

func newRequestReader(stream deliveryv1.DeliveryService_SendServer) *requestReader {
	r := &requestReader{ask: make(chan struct{}), got: make(chan recvResult, 1)}
	go func() {
		for range r.ask {
			req, err := stream.Recv()
			r.got <- recvResult{req, err}
			if err != nil {
				return
			}
		}
	}()
	return r
}

// next returns the next request, or errShuttingDown if drain ends first
// while the stream itself (streamCtx) goes on. Once next returned an error
// it must not be called again. A request the reader takes after a shutdown
// began is dropped, unanswered: the client sends it again elsewhere.
func (r *requestReader) next(streamCtx, drain context.Context) (*deliveryv1.SendRequest, error) {
	r.ask <- struct{}{}
	select {
	case g := <-r.got:
		return g.req, g.err
	case <-drain.Done():
		if streamCtx.Err() != nil {
			// The client went away (drain ends with the stream too):
			// Recv reports it at once.
			g := <-r.got
			return g.req, g.err
		}
		return nil, errShuttingDown
	}
}

// close ends the reader; one blocked in Recv returns when the stream ends.
func (r *requestReader) close() { close(r.ask) }

// writeResults streams results until the channel closes, packing the ones
// already waiting into one response. A response the client has not taken
// within stallTimeout calls onStall.
func writeResults(stream deliveryv1.DeliveryService_SendServer, results <-chan delivery.Result, stallTimeout time.Duration, onStall func()) error {
	failed := false
	var err error
	stall := time.AfterFunc(time.Hour, onStall)
	stall.Stop()
	for first := range results {
		if failed {
			continue // drain, so the pipeline never blocks on us
		}
		resp := &deliveryv1.SendResponse{}
		add := func(r delivery.Result) {
			resp.Results = append(resp.Results, resultProto(&r))
			if r.MessageDone {
				resp.CompletedKeys = append(resp.CompletedKeys, r.IdempotencyKey)
			}
		}
		add(first)
	more:
		for len(resp.Results) < maxResultsPerResponse {
			select {
			case r, ok := <-results:
				if !ok {
					break more
				}
				add(r)
			default:
				break more
			}
		}
		stall.Reset(stallTimeout)
		err = stream.Send(resp)
		stall.Stop()
		if err != nil {
			failed = true
		}
	}
	return err
}

func resultProto(r *delivery.Result) *deliveryv1.SendResult {
	return &deliveryv1.SendResult{
		IdempotencyKey:  r.IdempotencyKey,
		Token:           r.Target.Token,
		Platform:        r.Target.Platform,
		AppId:           r.Target.AppID,
		ProfileId:       r.Target.ProfileID,
		Status:          deliveryv1.SendStatus(r.Status),
		GatewayId:       r.GatewayID,
		Reason:          r.Reason,
		ExclusionReason: r.Exclusion,
		Detail:          r.Detail,
		Attempts:        int32(r.Attempts),
		Duplicate:       r.Duplicate,
		Time:            timestamppb.New(r.Time),
	}
}

// messages converts a request's messages. Values the domain cannot
// represent (an invalid duration) become values its validation rejects,
// so the client learns which field is wrong.
func messages(in []*deliveryv1.Message) []delivery.Message {
	out := make([]delivery.Message, len(in))
	for i, m := range in {
		out[i] = message(m)
	}
	return out
}

func message(m *deliveryv1.Message) delivery.Message {
	out := delivery.Message{
		IdempotencyKey: m.GetIdempotencyKey(),
		MessageID:      m.GetMessageId(),
		JourneyID:      m.GetJourneyId(),
		TTL:            duration(m.GetTtl()),
	}
	switch t := m.GetTarget().(type) {
	case *deliveryv1.Message_Profile:
		out.Profile = &delivery.ProfileTarget{
			ProfileID: t.Profile.GetProfileId(),
			AppIDs:    t.Profile.GetAppIds(),
			Platforms: t.Profile.GetPlatforms(),
		}
	case *deliveryv1.Message_Tokens:
		out.Tokens = make([]delivery.Target, len(t.Tokens.GetTokens()))
		for j, tok := range t.Tokens.GetTokens() {
			out.Tokens[j] = delivery.Target{Token: tok.GetToken(), Platform: tok.GetPlatform(), AppID: tok.GetAppId(), ProfileID: tok.GetProfileId()}
		}
	}
	if n := m.GetNotification(); n != nil {
		out.Notification = delivery.Notification{
			Title: n.GetTitle(), Subtitle: n.GetSubtitle(), Body: n.GetBody(), ImageURL: n.GetImageUrl(),
			Sound: n.GetSound(), Badge: n.Badge, Data: n.GetData(), Category: n.GetCategory(),
			ThreadID: n.GetThreadId(), DeepLink: n.GetDeepLink(),
		}
	}
	if a := m.GetApns(); a != nil {
		out.APNs = delivery.APNsOptions{
			PushType:         delivery.APNsPushType(a.GetPushType()),
			Priority:         int(a.GetPriority()),
			CollapseID:       a.GetCollapseId(),
			MutableContent:   a.GetMutableContent(),
			ContentAvailable: a.GetContentAvailable(),
		}
		if e := a.GetExpiration(); e != nil {
			if e.IsValid() {
				out.APNs.Expiration = e.AsTime()
			} else {
				out.APNs.Expiration = time.Unix(1, 0) // in the past: rejected by validation
			}
		}
	}
	if f := m.GetFcm(); f != nil {
		out.FCM = delivery.FCMOptions{
			Priority:    delivery.FCMPriority(f.GetPriority()),
			TTL:         duration(f.GetTtl()),
			CollapseKey: f.GetCollapseKey(),
			ChannelID:   f.GetChannelId(),
		}
	}
	return out
}

// duration converts a protobuf duration; an invalid one becomes -1, which
// validation rejects.
func duration(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	if !d.IsValid() {
		return -1
	}
	return d.AsDuration()
}
