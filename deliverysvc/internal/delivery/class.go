package delivery

import commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"

// Class is what the pipeline does about a failure reason.
type Class int

// Classes of failure reasons.
const (
	// ClassNone: no failure, the push was accepted.
	ClassNone Class = iota
	// ClassToken: the token is dead. Never retried; reported to profilesvc.
	ClassToken
	// ClassMessage: the message is wrong for the gateway. Never retried.
	ClassMessage
	// ClassCredentials: the gateway rejected the app's credentials. The app
	// is suspended.
	ClassCredentials
	// ClassRetryable: a transient gateway or network failure. Retried with
	// backoff within the TTL.
	ClassRetryable
	// ClassFinal: an outcome decided inside pushmesh (suspended app, TTL,
	// cancellation, internal error). Never retried.
	ClassFinal
)

// ClassOf returns the class of a failure reason.
func ClassOf(r commonv1.FailureReason) Class {
	switch r {
	case commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED:
		return ClassNone
	case commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN,
		commonv1.FailureReason_FAILURE_REASON_UNREGISTERED,
		commonv1.FailureReason_FAILURE_REASON_EXPIRED_TOKEN,
		commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC:
		return ClassToken
	case commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE,
		commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE:
		return ClassMessage
	case commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS,
		commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH:
		return ClassCredentials
	case commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED,
		commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE,
		commonv1.FailureReason_FAILURE_REASON_NETWORK:
		return ClassRetryable
	default:
		return ClassFinal
	}
}
