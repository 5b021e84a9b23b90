package apps

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/secret"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

// keyCheck is sealed into the meta bucket on first start, so a later start
// with another credentials key fails at once instead of on the first send.
var (
	keyCheckName  = []byte("credentials-key-check")
	keyCheckValue = []byte("pushmesh deliverysvc credentials key")
)

// Store keeps apps in bbolt. Non-secret fields are plain JSON; the
// credentials and everything that identifies them (key id, team id, client
// email, project id) are sealed with AES-256-GCM, bound to the app's key.
// The one plain field that quotes a gateway, the suspension detail, has
// those identifiers redacted.
type Store struct {
	db  *bolt.DB
	box *secret.Box
}

// record is an app as stored.
type record struct {
	DisplayName     string    `json:"display_name,omitempty"`
	APNsEnvironment int32     `json:"apns_environment,omitempty"`
	State           State     `json:"state"`
	SuspendedReason int32     `json:"suspended_reason,omitempty"`
	SuspendedDetail string    `json:"suspended_detail,omitempty"` // redacted: redactCredentials
	RateLimit       int32     `json:"rate_limit,omitempty"`
	CreateTime      time.Time `json:"create_time"`
	UpdateTime      time.Time `json:"update_time"`
	ValidateTime    time.Time `json:"validate_time,omitzero"`
	CredentialsTime time.Time `json:"credentials_time"`
	// Sealed is the sealed sealedCredentials.
	Sealed []byte `json:"sealed"`
}

// sealedCredentials is the plaintext inside record.Sealed.
type sealedCredentials struct {
	APNs *sealedAPNs `json:"apns,omitempty"`
	FCM  *sealedFCM  `json:"fcm,omitempty"`
	Info creds.Info  `json:"info"`
}

type sealedAPNs struct {
	KeyPEM string `json:"private_key_pem"`
	KeyID  string `json:"key_id"`
	TeamID string `json:"team_id"`
}

type sealedFCM struct {
	JSON string `json:"service_account_json"`
}

// OpenStore checks the credentials key against the data dir (recording it on
// first use) and returns the store. The buckets must exist (buckets.Create).
func OpenStore(db *bolt.DB, box *secret.Box) (*Store, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(buckets.Meta)
		sealed := meta.Get(keyCheckName)
		if sealed == nil {
			return meta.Put(keyCheckName, box.Seal(keyCheckValue, keyCheckName))
		}
		plain, err := box.Open(sealed, keyCheckName)
		if err != nil || !bytes.Equal(plain, keyCheckValue) {
			return errors.New("the credentials key does not match the one this data dir's credentials were sealed with")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Store{db: db, box: box}, nil
}

// storeKey is the bbolt key of an app: tenant, platform, app id.
func storeKey(tenant string, key delivery.AppKey) []byte {
	return boltdb.Key(tenant, platformSlug(key.Platform), key.AppID)
}

// platformSlug names platforms in keys; "apns" sorts before "fcm", as the
// enum values do, so listings come out by platform then app id.
func platformSlug(p commonv1.Platform) string {
	switch p {
	case commonv1.Platform_PLATFORM_APNS:
		return "apns"
	case commonv1.Platform_PLATFORM_FCM:
		return "fcm"
	}
	return "unknown"
}

func platformFromSlug(s string) commonv1.Platform {
	switch s {
	case "apns":
		return commonv1.Platform_PLATFORM_APNS
	case "fcm":
		return commonv1.Platform_PLATFORM_FCM
	}
	return commonv1.Platform_PLATFORM_UNSPECIFIED
}

// encode turns an app and its credentials into a stored record. It redacts
// app.SuspendedDetail in place, so the caller holds what is stored.
func (s *Store) encode(tenant string, app *App, c creds.Credentials) ([]byte, error) {
	app.SuspendedDetail = redactCredentials(app.SuspendedDetail, app.Credentials)
	sc := sealedCredentials{Info: app.Credentials}
	switch {
	case c.APNs != nil:
		sc.APNs = &sealedAPNs{KeyPEM: c.APNs.KeyPEM, KeyID: c.APNs.KeyID, TeamID: c.APNs.TeamID}
	case c.FCM != nil:
		sc.FCM = &sealedFCM{JSON: string(c.FCM.JSON)}
	default:
		return nil, errors.New("no credentials to store")
	}
	plain, err := json.Marshal(sc)
	if err != nil {
		return nil, err
	}
	rec := record{
		DisplayName:     app.DisplayName,
		APNsEnvironment: int32(app.APNsEnvironment),
		State:           app.State,
		SuspendedReason: int32(app.SuspendedReason),
		SuspendedDetail: app.SuspendedDetail,
		RateLimit:       app.RateLimit,
		CreateTime:      app.CreateTime,
		UpdateTime:      app.UpdateTime,
		ValidateTime:    app.ValidateTime,
		CredentialsTime: app.CredentialsTime,
		Sealed:          s.box.Seal(plain, storeKey(tenant, app.Key)),
	}
	return json.Marshal(rec)
}

// decode reads a stored record; withCreds also parses the credentials.
func (s *Store) decode(tenant string, key delivery.AppKey, value []byte, withCreds bool) (App, creds.Credentials, error) {
	var rec record
	if err := json.Unmarshal(value, &rec); err != nil {
		return App{}, creds.Credentials{}, fmt.Errorf("decode app %s/%s: %w", platformSlug(key.Platform), key.AppID, err)
	}
	plain, err := s.box.Open(rec.Sealed, storeKey(tenant, key))
	if err != nil {
		return App{}, creds.Credentials{}, fmt.Errorf("app %s/%s: %w", platformSlug(key.Platform), key.AppID, err)
	}
	var sc sealedCredentials
	if err := json.Unmarshal(plain, &sc); err != nil {
		return App{}, creds.Credentials{}, fmt.Errorf("decode app %s/%s credentials: %w", platformSlug(key.Platform), key.AppID, err)
	}
	app := App{
		Key:             key,
		DisplayName:     rec.DisplayName,
		APNsEnvironment: commonv1.ApnsEnvironment(rec.APNsEnvironment),
		State:           rec.State,
		SuspendedReason: commonv1.FailureReason(rec.SuspendedReason),
		// Redacted again for records written before redaction existed.
		SuspendedDetail: redactCredentials(rec.SuspendedDetail, sc.Info),
		RateLimit:       rec.RateLimit,
		Credentials:     sc.Info,
		CredentialsTime: rec.CredentialsTime,
		CreateTime:      rec.CreateTime,
		UpdateTime:      rec.UpdateTime,
		ValidateTime:    rec.ValidateTime,
	}
	var c creds.Credentials
	if withCreds {
		switch {
		case sc.APNs != nil:
			c.APNs, err = creds.ParseAPNs(sc.APNs.KeyPEM, sc.APNs.KeyID, sc.APNs.TeamID, "stored")
		case sc.FCM != nil:
			c.FCM, err = creds.ParseFCM(sc.FCM.JSON, "stored")
		default:
			err = errors.New("no credentials stored")
		}
		if err != nil {
			return App{}, creds.Credentials{}, fmt.Errorf("app %s/%s: stored credentials: %w", platformSlug(key.Platform), key.AppID, err)
		}
	}
	return app, c, nil
}

// redactCredentials replaces the identifiers of credentials in a gateway's
// words (APNs's check names the team of a sender/topic mismatch) with what
// they are, so that the suspension detail, stored in clear and copied into
// the results of the messages an app's suspension fails, does not give away
// what is sealed. The longer identifiers go first: a client email contains
// the project id.
func redactCredentials(detail string, info creds.Info) string {
	if detail == "" {
		return detail
	}
	for _, id := range []struct{ value, name string }{
		{info.ClientEmail, "[client email]"},
		{info.ProjectID, "[project id]"},
		{info.TeamID, "[team id]"},
		{info.KeyID, "[key id]"},
	} {
		if id.value != "" {
			detail = strings.ReplaceAll(detail, id.value, id.name)
		}
	}
	return detail
}

// Get returns an app and its credentials, or ErrNotFound.
func (s *Store) Get(tenant string, key delivery.AppKey) (App, creds.Credentials, error) {
	var value []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(buckets.Apps).Get(storeKey(tenant, key)); v != nil {
			value = bytes.Clone(v)
		}
		return nil
	})
	if err != nil {
		return App{}, creds.Credentials{}, err
	}
	if value == nil {
		return App{}, creds.Credentials{}, ErrNotFound
	}
	return s.decode(tenant, key, value, true)
}

// Create stores a new app, or fails with ErrAlreadyExists.
func (s *Store) Create(tenant string, app *App, c creds.Credentials) error {
	value, err := s.encode(tenant, app, c)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.Apps)
		k := storeKey(tenant, app.Key)
		if b.Get(k) != nil {
			return ErrAlreadyExists
		}
		return b.Put(k, value)
	})
}

// Update reads an app, lets change modify it (and its credentials), and
// writes it back, all in one transaction. change may return an error to
// abort without writing.
func (s *Store) Update(tenant string, key delivery.AppKey, change func(app *App, c *creds.Credentials) error) (App, error) {
	var out App
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.Apps)
		k := storeKey(tenant, key)
		v := b.Get(k)
		if v == nil {
			return ErrNotFound
		}
		app, c, err := s.decode(tenant, key, v, true)
		if err != nil {
			return err
		}
		if err := change(&app, &c); err != nil {
			return err
		}
		value, err := s.encode(tenant, &app, c)
		if err != nil {
			return err
		}
		out = app
		return b.Put(k, value)
	})
	return out, err
}

// Delete removes an app, or fails with ErrNotFound.
func (s *Store) Delete(tenant string, key delivery.AppKey) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.Apps)
		k := storeKey(tenant, key)
		if b.Get(k) == nil {
			return ErrNotFound
		}
		return b.Delete(k)
	})
}

// List returns up to limit apps of tenant after the app key after (nil for
// the first page), by platform then app id, and whether more follow.
func (s *Store) List(tenant string, after *delivery.AppKey, limit int) ([]App, bool, error) {
	type raw struct {
		key   delivery.AppKey
		value []byte
	}
	var raws []raw
	more := false
	prefix := boltdb.TenantPrefix(tenant)
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(buckets.Apps).Cursor()
		var k, v []byte
		if after == nil {
			k, v = c.Seek(prefix)
		} else {
			start := storeKey(tenant, *after)
			k, v = c.Seek(start)
			if bytes.Equal(k, start) {
				k, v = c.Next()
			}
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(raws) == limit {
				more = true
				break
			}
			slug, appID, ok := bytes.Cut(k[len(prefix):], []byte{0})
			if !ok {
				continue
			}
			raws = append(raws, raw{
				key:   delivery.AppKey{Platform: platformFromSlug(string(slug)), AppID: string(appID)},
				value: bytes.Clone(v),
			})
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	apps := make([]App, 0, len(raws))
	for _, r := range raws {
		app, _, err := s.decode(tenant, r.key, r.value, false)
		if err != nil {
			return nil, false, err
		}
		apps = append(apps, app)
	}
	return apps, more, nil
}

// Suspended counts the suspended apps of every tenant by platform and
// reason, for the apps-suspended gauge. It decodes only each app's state
// and reason, never its sealed credentials: a scan of a few thousand
// small records, once per metric collection.
func (s *Store) Suspended() (map[metrics.SuspendedKey]int, error) {
	out := map[metrics.SuspendedKey]int{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(buckets.Apps).ForEach(func(k, v []byte) error {
			// tenant \x00 platform \x00 app id
			parts := bytes.SplitN(k, []byte{0}, 3)
			if len(parts) != 3 {
				return nil
			}
			var rec struct {
				State           State `json:"state"`
				SuspendedReason int32 `json:"suspended_reason"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode app: %w", err)
			}
			if rec.State == StateSuspended {
				out[metrics.SuspendedKey{Platform: platformFromSlug(string(parts[1])), Reason: commonv1.FailureReason(rec.SuspendedReason)}]++
			}
			return nil
		})
	})
	return out, err
}
