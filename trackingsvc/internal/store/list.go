package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// maxScanPerPage bounds the events one List call reads, so a selective
// filter over a large store answers with a short (even empty) page and a
// token instead of holding a read transaction for minutes.
const maxScanPerPage = 200_000

// List returns up to limit events matching f and types (empty: all), in the
// order they were stored, after the position in pageToken. The returned
// token resumes after the last event read; it is "" when the end was
// reached.
func (s *Store) List(ctx context.Context, tenant string, f Filter, types []trackingv1.EventType, limit int, pageToken string) ([]*trackingv1.Event, string, error) {
	_, span := tracer.Start(ctx, "store.List")
	defer span.End()
	tp := boltdb.TenantPrefix(tenant)
	after := uint64(0) // list events numbered after this
	if pageToken != "" {
		seq, err := hex.DecodeString(pageToken)
		if err != nil || len(seq) != 8 {
			return nil, "", fault.OnField(ErrBadPageToken, "page_token", "page_token was not issued by ListEvents")
		}
		after = binary.BigEndian.Uint64(seq)
		if after == math.MaxUint64 {
			return nil, "", fault.OnField(ErrBadPageToken, "page_token", "page_token was not issued by ListEvents")
		}
	}
	want := map[trackingv1.EventType]bool{}
	for _, t := range types {
		want[t] = true
	}
	var out []*trackingv1.Event
	var last uint64
	full, more := false, false
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		k, v := firstBlockAfter(c, tp, after)
		scanned := 0
		for ; k != nil && bytes.HasPrefix(k, tp); k, v = c.Next() {
			if full {
				more = true // another block follows
				break
			}
			first := binary.BigEndian.Uint64(k[len(tp):])
			at, _, err := blockHeader(v)
			if err != nil {
				return fmt.Errorf("event block %x: %w", k, err)
			}
			received := timestamppb.New(at)
			var decodeErr error
			err = eachInBlock(v, func(i int, raw []byte) bool {
				seq := first + uint64(i)
				if seq <= after {
					return true
				}
				if full {
					more = true
					return false
				}
				var e *trackingv1.Event
				if e, decodeErr = decodeEvent(raw, received); decodeErr != nil {
					return false
				}
				if matches(e, f, want) {
					out = append(out, e)
				}
				last = seq
				scanned++
				full = len(out) == limit || scanned == maxScanPerPage
				return true
			})
			if err = errors.Join(err, decodeErr); err != nil {
				return fmt.Errorf("decode events: %w", err)
			}
			if more {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	next := ""
	if more {
		next = hex.EncodeToString(binary.BigEndian.AppendUint64(nil, last))
	}
	return out, next, nil
}

// firstBlockAfter positions c on the tenant's block holding the first event
// numbered after `after` (or the first block after that), and returns it.
func firstBlockAfter(c *bolt.Cursor, tp []byte, after uint64) ([]byte, []byte) {
	target := binary.BigEndian.AppendUint64(bytes.Clone(tp), after+1)
	k, v := c.Seek(target)
	if k != nil && bytes.Equal(k, target) {
		return k, v
	}
	// The event may sit inside the block before.
	var pk, pv []byte
	if k == nil {
		pk, pv = c.Last()
	} else {
		pk, pv = c.Prev()
	}
	if pk != nil && bytes.HasPrefix(pk, tp) {
		return pk, pv
	}
	return c.Seek(target)
}

func matches(e *trackingv1.Event, f Filter, types map[trackingv1.EventType]bool) bool {
	t := e.GetEventTime().AsTime()
	return (f.JourneyID == "" || e.GetJourneyId() == f.JourneyID) &&
		(f.MessageID == "" || e.GetMessageId() == f.MessageID) &&
		(f.AppID == "" || e.GetAppId() == f.AppID) &&
		(f.Platform == commonv1.Platform_PLATFORM_UNSPECIFIED || e.GetPlatform() == f.Platform) &&
		(f.From.IsZero() || !t.Before(f.From)) &&
		(f.To.IsZero() || t.Before(f.To)) &&
		(len(types) == 0 || types[e.GetType()])
}
