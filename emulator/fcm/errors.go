package fcm

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// FcmError codes, as in google.firebase.fcm.v1.FcmError.ErrorCode.
const (
	ErrUnregistered        = "UNREGISTERED"
	ErrInvalidArgument     = "INVALID_ARGUMENT"
	ErrSenderIDMismatch    = "SENDER_ID_MISMATCH"
	ErrQuotaExceeded       = "QUOTA_EXCEEDED"
	ErrUnavailable         = "UNAVAILABLE"
	ErrInternal            = "INTERNAL"
	ErrThirdPartyAuthError = "THIRD_PARTY_AUTH_ERROR"
)

// RPC status names used without an FcmError detail.
const (
	statusUnauthenticated  = "UNAUTHENTICATED"
	statusPermissionDenied = "PERMISSION_DENIED"
	statusInvalidArgument  = "INVALID_ARGUMENT"
	statusNotFound         = "NOT_FOUND"
)

type fcmError struct {
	status  int    // HTTP
	rpc     string // google.rpc.Code name
	message string // default message, as Google words it
}

// fcmErrors maps each FcmError code to how FCM answers it.
var fcmErrors = map[string]fcmError{
	ErrUnregistered:        {http.StatusNotFound, "NOT_FOUND", "Requested entity was not found."},
	ErrInvalidArgument:     {http.StatusBadRequest, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"},
	ErrSenderIDMismatch:    {http.StatusForbidden, "PERMISSION_DENIED", "SenderId mismatch"},
	ErrQuotaExceeded:       {http.StatusTooManyRequests, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' of service 'fcm.googleapis.com'."},
	ErrUnavailable:         {http.StatusServiceUnavailable, "UNAVAILABLE", "The service is currently unavailable."},
	ErrInternal:            {http.StatusInternalServerError, "INTERNAL", "Internal error encountered."},
	ErrThirdPartyAuthError: {http.StatusUnauthorized, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"},
}

// StatusForErrorCode returns the HTTP status FCM answers with an FcmError
// code.
func StatusForErrorCode(code string) (int, bool) {
	e, ok := fcmErrors[code]
	return e.status, ok
}

// errorBody is Google's error envelope.
type errorBody struct {
	Error struct {
		Code    int              `json:"code"`
		Message string           `json:"message"`
		Status  string           `json:"status"`
		Details []map[string]any `json:"details,omitempty"`
	} `json:"error"`
}

const (
	typeFcmError   = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
	typeBadRequest = "type.googleapis.com/google.rpc.BadRequest"
	typeErrorInfo  = "type.googleapis.com/google.rpc.ErrorInfo"
)

// reply is a prepared error answer.
type reply struct {
	status     int
	rpc        string
	message    string
	fcmCode    string // adds the FcmError detail when set
	field      string // adds a BadRequest field violation when set
	infoReason string // adds an ErrorInfo detail when set
	retryAfter int64
}

// code is what Delivery.ErrorCode records for the reply.
func (r *reply) code() string {
	if r.fcmCode != "" {
		return r.fcmCode
	}
	return r.rpc
}

// fcmReply builds the reply for an FcmError code, with an optional message
// instead of the default one.
func fcmReply(code, message string) *reply {
	e := fcmErrors[code]
	if message == "" {
		message = e.message
	}
	return &reply{status: e.status, rpc: e.rpc, message: message, fcmCode: code}
}

// invalid is a semantic validation failure: FCM answers it with the
// FcmError detail INVALID_ARGUMENT, so messaging.IsInvalidArgument is true.
func invalid(field, message string) *reply {
	r := fcmReply(ErrInvalidArgument, message)
	r.field = field
	return r
}

// malformed is a failure to read the JSON against the API's schema (syntax,
// unknown field, wrong type). Google's front end answers those before FCM
// sees the message, with a BadRequest detail and no FcmError.
func malformed(field, message string) *reply {
	return &reply{status: http.StatusBadRequest, rpc: statusInvalidArgument, message: message, field: field}
}

func writeReply(w http.ResponseWriter, r *reply) {
	var b errorBody
	b.Error.Code = r.status
	b.Error.Message = r.message
	b.Error.Status = r.rpc
	if r.fcmCode != "" {
		b.Error.Details = append(b.Error.Details, map[string]any{"@type": typeFcmError, "errorCode": r.fcmCode})
	}
	if r.field != "" {
		b.Error.Details = append(b.Error.Details, map[string]any{
			"@type":           typeBadRequest,
			"fieldViolations": []map[string]string{{"field": r.field, "description": r.message}},
		})
	}
	if r.infoReason != "" {
		b.Error.Details = append(b.Error.Details, map[string]any{
			"@type":    typeErrorInfo,
			"reason":   r.infoReason,
			"domain":   "googleapis.com",
			"metadata": map[string]string{"service": "fcm.googleapis.com", "method": "google.firebase.fcm.v1.FcmService.SendMessage"},
		})
	}
	body, _ := json.Marshal(&b) // maps of strings: cannot fail
	h := w.Header()
	h["Content-Type"] = []string{"application/json; charset=UTF-8"}
	if r.retryAfter > 0 {
		h["Retry-After"] = []string{strconv.FormatInt(r.retryAfter, 10)}
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(body)
}
