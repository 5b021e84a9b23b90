// Package delivery is deliverysvc's send pipeline: it takes platform-neutral
// messages, resolves who receives them, builds the APNs and FCM payloads,
// sends them through the apps' gateways with retries, and reports one Result
// per token. The Send RPC and journeys both send through it; it knows nothing
// of gRPC.
//
// # Entry point
//
//	p := delivery.New(cfg, deps)           // once, in server.Start
//	s := p.Open(ctx, func(r delivery.Result) { ... })
//	for batch := range batches {
//		if err := s.Submit(batch); err != nil { ... } // blocks while the pipeline is full
//	}
//	err := s.Close()                       // waits for every submitted message
//
// A Session belongs to one tenant (tenant.FromContext(ctx) at Open) and one
// caller: the Send stream opens one per stream, a journey one per run.
// Cancelling ctx cancels the session's pending work: messages not yet sent
// finish with FAILURE_REASON_CANCELLED.
//
// # Backpressure
//
// The pipeline bounds the work in flight across all sessions (Config.MaxInFlight,
// counted in tokens: an explicit-token message weighs its token count, a
// profile message weighs 1; copies of a key in flight weigh the same as
// other messages). Submit returns only when every message of the batch has
// been admitted, so a caller that submits faster than the gateways accept
// simply waits; nothing is buffered without bound. A message keeps its
// weight until its results are emitted, and emit may block: a slow reader
// of results slows the pipeline down instead of growing a queue. As the
// limit is shared, a session whose emit blocks for good would end up holding
// all of it and block every session's Submit; SessionOptions.MaxInFlight
// bounds what one session may hold (the Send RPC gives each stream half,
// and ends a stream whose client stopped reading), and callers must keep
// reading, or cancel the session.
//
// # Results
//
// emit is called once per token (or once per message for a message-level
// outcome such as an invalid message or a profile without tokens), from the
// pipeline's goroutines, possibly concurrently: it must be safe for
// concurrent use. Result.MessageDone is set on the last result of a message,
// so a caller can tell when a message is complete. Results come in no
// particular order.
//
// Statuses and reasons (commonv1.FailureReason / ExclusionReason) follow the
// error classes of the gateways:
//
//   - permanent token errors (BAD_DEVICE_TOKEN, UNREGISTERED, EXPIRED_TOKEN,
//     DEVICE_TOKEN_NOT_FOR_TOPIC) are never retried and are reported to
//     profilesvc (TokenFeedback) with the gateway's timestamp;
//   - retryable errors (RATE_LIMITED, GATEWAY_UNAVAILABLE, NETWORK) are retried
//     with exponential backoff and jitter, honouring Retry-After, until the
//     message's TTL would run out;
//   - credential errors (INVALID_CREDENTIALS, SENDER_MISMATCH) suspend the app:
//     later messages fail fast with APP_SUSPENDED until the credentials are
//     updated and validated;
//   - message errors (INVALID_MESSAGE, PAYLOAD_TOO_LARGE) fail the message for
//     that platform without a retry; payload limits (4096 bytes, 5120 for
//     APNs VoIP) are checked before anything is sent.
//
// # Idempotency
//
// A message's IdempotencyKey is remembered per tenant for Config.DedupeWindow
// (7 days). A message whose key was completed before is not sent again: its
// stored results are emitted with Duplicate set. Copies of a key submitted
// while a message with it is in flight are admitted like any message (they
// take their in-flight weight, so resending a batch is held back by
// backpressure too) and wait for that message's outcome. Whichever copy is
// admitted first sends: a key is claimed at Submit but a message is sent
// only once admitted, and a later copy admitted before it sends instead of
// waiting behind it.
// Invalid and cancelled messages are not remembered, so they can be sent
// again once fixed. The message id (default: the idempotency key) is also
// the APNs apns-collapse-id and the FCM collapse key, so a resend after a
// crash replaces the notification on the device instead of duplicating it.
//
// # Tracking data in every push
//
// Every push carries the journey id, the message id and the W3C traceparent
// of the message's send span, so an app can echo them in tracking events:
//
//   - APNs: a top-level "pm" object beside "aps":
//     {"aps":{…},"pm":{"j":"<journey id>","m":"<message id>","tp":"<traceparent>"}}
//   - FCM: data keys "pm_journey_id", "pm_message_id" and "traceparent".
//
// Notification.Data is delivered as top-level string keys (APNs) or data keys
// (FCM); Notification.DeepLink as "deep_link" and, for APNs, ImageURL as
// "image_url". Those keys, "aps", "pm" and FCM's reserved keys cannot be used
// in Data.
//
// # Outcomes
//
// Every SENT, FAILED and EXCLUDED result (not duplicates, invalid messages or
// cancellations) is handed to the Recorder, which deliverysvc backs with a
// durable outbox forwarding to trackingsvc; emit is called after the
// Recorder has committed the message's results. Workers do not wait for that
// commit: they go on sending, and the session reports the message (emits its
// results, remembers its outcome, frees its in-flight weight) once the commit
// is done, in commit order, on a goroutine of the session's own. Dead tokens
// are reported to Feedback the same way, before the message is.
//
// A write that fails (a disk error) is written again after a backoff until
// it succeeds, and the message is reported only then: it keeps its
// in-flight weight meanwhile, so a failing disk stops intake (Submit
// blocks, and Close waits) rather than losing events a resend would be
// told were recorded. Only when the outbox is closed (ErrRecorderClosed, at
// shutdown) is the message reported without a durable record; it is then
// not remembered, so a resend is sent and recorded again. Failures are
// logged at most once per 10 seconds across the pipeline.
package delivery
