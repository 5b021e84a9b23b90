package store

import (
	"encoding/binary"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

// Events are stored in blocks of up to eventsPerBlock events of one batch,
// keyed by the tenant and the sequence number of the block's first event; the
// events of a block have consecutive numbers. One key per block instead of
// per event makes ingest cheap (a bbolt Put costs about a microsecond, and
// fewer keys mean fewer branch pages to rewrite at commit) while a listing
// still decodes at most one block it does not need.
//
// A block's value is a header (the receive time in unix nanoseconds, 8 bytes,
// and the event count, 2 bytes), then each event as its length (4 bytes) and
// its protobuf encoding; fixed-size lengths are written after the encoding,
// which saves sizing each event twice. The header lets retention drop blocks without
// decoding events.
const eventsPerBlock = 512

var errBadBlock = errors.New("corrupt event block")

// encodeEvents encodes each event with a 4-byte length prefix, all in one
// buffer. It runs before the store's lock is taken, so concurrent batches
// encode in parallel and the serialized transaction only copies bytes.
func encodeEvents(evs []*trackingv1.Event) [][]byte {
	out := make([][]byte, len(evs))
	buf := make([]byte, 0, 256*len(evs))
	for i, e := range evs {
		start := len(buf)
		buf = appendEvent(append(buf, 0, 0, 0, 0), e)
		binary.BigEndian.PutUint32(buf[start:], uint32(len(buf)-start-4))
		out[i] = buf[start:len(buf):len(buf)]
	}
	// An append that grew buf left earlier slices in the old array: they
	// stay valid, only that memory is held a little longer.
	return out
}

// appendEvents writes the new events (encoded by encodeEvents) in blocks
// under consecutive sequence numbers and returns the first number. The
// receive time is stored once, in the block header, and set on each event
// when it is read.
func appendEvents(b *bolt.Bucket, tenant string, encoded [][]byte, isNew []bool, received time.Time) (uint64, error) {
	// Keys only ever grow within a tenant: pack pages full instead of
	// bbolt's default half, which suits random inserts.
	b.FillPercent = 0.95
	tp := boltdb.TenantPrefix(tenant)
	seq := b.Sequence()
	first := seq + 1
	var block []byte
	inBlock, blockSeq := 0, uint64(0)
	flush := func() error {
		if inBlock == 0 {
			return nil
		}
		binary.BigEndian.PutUint16(block[8:], uint16(inBlock))
		key := binary.BigEndian.AppendUint64(append([]byte{}, tp...), blockSeq)
		err := b.Put(key, block)
		block, inBlock = nil, 0
		return err
	}
	for i, enc := range encoded {
		if !isNew[i] {
			continue
		}
		seq++
		if inBlock == 0 {
			blockSeq = seq
			// bbolt keeps the value until commit: each block gets its own
			// buffer, sized for the events it will hold.
			size := 10
			for j, n := i, 0; j < len(encoded) && n < eventsPerBlock; j++ {
				if isNew[j] {
					size += len(encoded[j])
					n++
				}
			}
			block = make([]byte, 10, size)
			binary.BigEndian.PutUint64(block, uint64(received.UnixNano()))
		}
		block = append(block, enc...)
		inBlock++
		if inBlock == eventsPerBlock {
			if err := flush(); err != nil {
				return 0, err
			}
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	return first, b.SetSequence(seq)
}

// blockHeader returns a block's receive time and event count.
func blockHeader(v []byte) (time.Time, int, error) {
	if len(v) < 10 {
		return time.Time{}, 0, errBadBlock
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))), int(binary.BigEndian.Uint16(v[8:])), nil
}

// decodeEvent decodes one event of a block received at received. The
// result holds no reference to raw.
func decodeEvent(raw []byte, received *timestamppb.Timestamp) (*trackingv1.Event, error) {
	e := &trackingv1.Event{}
	if err := proto.Unmarshal(raw, e); err != nil {
		return nil, err
	}
	e.ReceiveTime = received
	return e, nil
}

// eachInBlock calls fn with the index and encoding of every event in a block
// until fn returns false. The encoding points into v: decode it before the
// transaction ends.
func eachInBlock(v []byte, fn func(i int, event []byte) bool) error {
	_, n, err := blockHeader(v)
	if err != nil {
		return err
	}
	rest := v[10:]
	for i := range n {
		if len(rest) < 4 {
			return errBadBlock
		}
		size := int(binary.BigEndian.Uint32(rest))
		if len(rest)-4 < size {
			return errBadBlock
		}
		if !fn(i, rest[4:4+size]) {
			return nil
		}
		rest = rest[4+size:]
	}
	return nil
}
