package apns

import "time"

// APNs reasons, as Apple documents them in "Handling notification responses
// from APNs" and as apns2 names them.
const (
	ReasonBadCollapseID               = "BadCollapseId"
	ReasonBadDeviceToken              = "BadDeviceToken"
	ReasonBadExpirationDate           = "BadExpirationDate"
	ReasonBadMessageID                = "BadMessageId"
	ReasonBadPriority                 = "BadPriority"
	ReasonBadTopic                    = "BadTopic"
	ReasonDeviceTokenNotForTopic      = "DeviceTokenNotForTopic"
	ReasonDuplicateHeaders            = "DuplicateHeaders"
	ReasonIdleTimeout                 = "IdleTimeout"
	ReasonInvalidPushType             = "InvalidPushType"
	ReasonMissingDeviceToken          = "MissingDeviceToken"
	ReasonMissingTopic                = "MissingTopic"
	ReasonPayloadEmpty                = "PayloadEmpty"
	ReasonTopicDisallowed             = "TopicDisallowed"
	ReasonBadCertificate              = "BadCertificate"
	ReasonBadCertificateEnvironment   = "BadCertificateEnvironment"
	ReasonExpiredProviderToken        = "ExpiredProviderToken"
	ReasonForbidden                   = "Forbidden"
	ReasonInvalidProviderToken        = "InvalidProviderToken"
	ReasonMissingProviderToken        = "MissingProviderToken"
	ReasonBadPath                     = "BadPath"
	ReasonMethodNotAllowed            = "MethodNotAllowed"
	ReasonExpiredToken                = "ExpiredToken"
	ReasonUnregistered                = "Unregistered"
	ReasonPayloadTooLarge             = "PayloadTooLarge"
	ReasonTooManyProviderTokenUpdates = "TooManyProviderTokenUpdates"
	ReasonTooManyRequests             = "TooManyRequests"
	ReasonInternalServerError         = "InternalServerError"
	ReasonServiceUnavailable          = "ServiceUnavailable"
	ReasonShutdown                    = "Shutdown"

	// ReasonBadPayload answers a body that is not a JSON object. Apple does
	// not document a reason for it; the emulator uses this one (400).
	ReasonBadPayload = "BadPayload"
	// ReasonHTTPVersionNotSupported answers a push sent over HTTP/1.x,
	// which Apple's gateway does not speak at all (505, emulator-specific).
	ReasonHTTPVersionNotSupported = "HTTPVersionNotSupported"
)

// reasonStatus maps each reason to its HTTP status.
var reasonStatus = map[string]int{
	ReasonBadCollapseID:               400,
	ReasonBadDeviceToken:              400,
	ReasonBadExpirationDate:           400,
	ReasonBadMessageID:                400,
	ReasonBadPriority:                 400,
	ReasonBadTopic:                    400,
	ReasonDeviceTokenNotForTopic:      400,
	ReasonDuplicateHeaders:            400,
	ReasonIdleTimeout:                 400,
	ReasonInvalidPushType:             400,
	ReasonMissingDeviceToken:          400,
	ReasonMissingTopic:                400,
	ReasonPayloadEmpty:                400,
	ReasonTopicDisallowed:             400,
	ReasonBadPayload:                  400,
	ReasonBadCertificate:              403,
	ReasonBadCertificateEnvironment:   403,
	ReasonExpiredProviderToken:        403,
	ReasonForbidden:                   403,
	ReasonInvalidProviderToken:        403,
	ReasonMissingProviderToken:        403,
	ReasonBadPath:                     404,
	ReasonMethodNotAllowed:            405,
	ReasonExpiredToken:                410,
	ReasonUnregistered:                410,
	ReasonPayloadTooLarge:             413,
	ReasonTooManyProviderTokenUpdates: 429,
	ReasonTooManyRequests:             429,
	ReasonInternalServerError:         500,
	ReasonServiceUnavailable:          503,
	ReasonShutdown:                    503,
	ReasonHTTPVersionNotSupported:     505,
}

// StatusForReason returns the HTTP status APNs answers with reason.
func StatusForReason(reason string) (int, bool) {
	s, ok := reasonStatus[reason]
	return s, ok
}

// topicSuffix is the suffix Apple requires on apns-topic for each push type
// (the bundle ID alone when empty). A push type missing here is invalid.
var topicSuffix = map[string]string{
	"alert":        "",
	"background":   "",
	"mdm":          "",
	"location":     ".location-query",
	"voip":         ".voip",
	"complication": ".complication",
	"fileprovider": ".pushkit.fileprovider",
	"liveactivity": ".push-type.liveactivity",
	"pushtotalk":   ".voip-ptt",
	"widgets":      ".push-type.widgets",
}

const (
	maxPayload     = 4096
	maxVoIPPayload = 5120
	maxCollapseID  = 64
	// Provider tokens older than this are refused (Apple: one hour).
	maxTokenAge = 3600
	// Provider tokens issued further in the future than this are refused as
	// invalid: clocks on one machine agree, so this only forgives rounding.
	maxTokenSkew = 60
	// tokenUpdateWindow is the period over which provider token switches
	// on one connection are counted.
	tokenUpdateWindow = 20 * time.Minute
	// DefaultMaxTokenUpdates is how many times a connection may switch to a
	// different provider token within 20 minutes before APNs answers 429
	// TooManyProviderTokenUpdates.
	DefaultMaxTokenUpdates = 2
)
