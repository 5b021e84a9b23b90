// Package demo builds the demo world of `pushctl dev`: apps with credentials
// the local gateway emulators accept, a population of customers with one to
// four devices each (iOS and Android, two iOS apps), a few dead tokens, a few
// opted-out and token-less customers, and a journey that reaches them.
// Everything is derived from a seed, so a run is reproducible.
package demo

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

// The demo's apps: two iOS apps of one team and one Android app.
const (
	ShopApp    = "com.pushmesh.shop"
	WalletApp  = "com.pushmesh.wallet"
	TeamID     = "PMDEMOTEAM"
	KeyID      = "PMDEMOKEY1"
	FCMProject = "pushmesh-demo"
)

// AppRequests creates credentials the emulators accept (an APNs .p8 key for
// the team, a service account for the FCM project) and returns the
// registrations of the demo's three apps.
func AppRequests(apnsEmu *apns.Server, fcmEmu *fcm.Server) ([]*deliveryv1.RegisterAppRequest, error) {
	p8, _, err := apnsEmu.NewProviderKey(TeamID, KeyID)
	if err != nil {
		return nil, fmt.Errorf("demo apns key: %w", err)
	}
	apnsEmu.RegisterTopic(TeamID, ShopApp)
	apnsEmu.RegisterTopic(TeamID, WalletApp)
	saJSON, _, err := fcmEmu.NewServiceAccount(FCMProject)
	if err != nil {
		return nil, fmt.Errorf("demo fcm service account: %w", err)
	}
	apnsCreds := &deliveryv1.Credentials{Kind: &deliveryv1.Credentials_ApnsToken{ApnsToken: &deliveryv1.ApnsTokenCredentials{
		PrivateKeyPem: string(p8), KeyId: KeyID, TeamId: TeamID,
	}}}
	return []*deliveryv1.RegisterAppRequest{
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: ShopApp}, DisplayName: "Shop (iOS)",
			ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION, Credentials: apnsCreds},
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: WalletApp}, DisplayName: "Wallet (iOS)",
			ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION, Credentials: apnsCreds},
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: ShopApp}, DisplayName: "Shop (Android)",
			Credentials: &deliveryv1.Credentials{Kind: &deliveryv1.Credentials_FcmServiceAccount{FcmServiceAccount: &deliveryv1.FcmServiceAccount{
				ServiceAccountJson: string(saJSON),
			}}}},
	}, nil
}

// Device is one demo push token.
type Device struct {
	Token    string
	Platform commonv1.Platform
	AppID    string
}

// Population is the demo's customers.
type Population struct {
	// Rows are the CRM import rows: one per device.
	Rows []*profilev1.ImportRow
	// Dead are tokens the gateways will answer "unregistered" for.
	Dead []Device
	// OptedOut are customer ids whose consent is withdrawn.
	OptedOut []string
	// Tokenless are customers without any device.
	Tokenless []string
	// Profiles is the number of customers with devices.
	Profiles int
}

var (
	firstNames = []string{"Ada", "Grace", "Alan", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Radia", "Edsger", "Frances", "John"}
	tiers      = []string{"gold", "silver", "bronze"}
	locales    = []string{"en-US", "en-GB", "fr-FR", "de-DE"}
)

// NewPopulation builds n customers with 1–4 devices each. About 1 % of
// tokens are dead, 2 % of customers opted out, 3 % have no first name, and
// n/100 extra customers have no device at all. sourceTime is the CRM's
// registration time of every token.
func NewPopulation(n int, seed uint64, sourceTime time.Time) *Population {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	p := &Population{Profiles: n}
	for i := range n {
		customer := fmt.Sprintf("C-%06d", i+1)
		attrs := map[string]any{
			"tier":   tiers[rng.IntN(len(tiers))],
			"locale": locales[rng.IntN(len(locales))],
		}
		if rng.IntN(100) >= 3 {
			attrs["firstName"] = firstNames[rng.IntN(len(firstNames))]
		}
		st, _ := structpb.NewStruct(attrs)
		devices := 1 + rng.IntN(4)
		for d := range devices {
			dev := newDevice(rng)
			p.Rows = append(p.Rows, &profilev1.ImportRow{
				Token: dev.Token, Platform: dev.Platform, AppId: dev.AppID, CustomerId: customer,
				SourceTime: timestamppb.New(sourceTime), Attributes: st,
				DeviceId: fmt.Sprintf("%s-device-%d", customer, d+1),
			})
			if rng.IntN(100) == 0 {
				p.Dead = append(p.Dead, dev)
			}
		}
		if rng.IntN(50) == 0 {
			p.OptedOut = append(p.OptedOut, customer)
		}
	}
	for i := range n / 100 {
		p.Tokenless = append(p.Tokenless, fmt.Sprintf("C-NODEVICE-%04d", i+1))
	}
	return p
}

// newDevice draws a device: 60 % iOS (two apps), 40 % Android.
func newDevice(rng *rand.Rand) Device {
	if rng.IntN(10) < 6 {
		app := ShopApp
		if rng.IntN(3) == 0 {
			app = WalletApp
		}
		var b [32]byte
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return Device{Token: hex.EncodeToString(b[:]), Platform: commonv1.Platform_PLATFORM_APNS, AppID: app}
	}
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
	b := make([]byte, 152)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	b[22] = ':' // FCM registration tokens look like "<instance id>:<token>"
	return Device{Token: string(b), Platform: commonv1.Platform_PLATFORM_FCM, AppID: ShopApp}
}

// MarkDead tells the emulators to answer "unregistered" for the dead tokens,
// as Apple and Google do after an uninstall, with a gateway timestamp later
// than the registrations.
func (p *Population) MarkDead(apnsEmu *apns.Server, fcmEmu *fcm.Server, at time.Time) {
	for _, d := range p.Dead {
		if d.Platform == commonv1.Platform_PLATFORM_APNS {
			apnsEmu.MarkUnregistered(d.Token, at)
		} else {
			fcmEmu.MarkUnregistered(d.Token)
		}
	}
}

// Journey is the demo journey: gold and silver customers, personalized by
// first name with a fallback, localized in French and German, on all three
// apps. The German variant requires a first name, so German customers
// without one are excluded with a render error.
func Journey() *deliveryv1.Journey {
	return &deliveryv1.Journey{
		Name:     "Winter sale for gold and silver members",
		AppIds:   []string{ShopApp, WalletApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier in ["gold", "silver"]`},
		Template: &deliveryv1.MessageTemplate{
			Title:    `Hi {{firstName | default "there"}}!`,
			Body:     `Your {{tier}} member discount is waiting: 30% off until Sunday.`,
			DeepLink: `pushmesh://sale/{{identity.customer_id}}`,
			Data:     map[string]string{"campaign": "winter-sale"},
			Sound:    "default",
		},
		Variants: []*deliveryv1.TemplateVariant{
			{Locale: "fr", Template: &deliveryv1.MessageTemplate{
				Title: `Bonjour {{firstName | default "à vous"}} !`,
				Body:  `Votre remise {{tier}} vous attend : -30 % jusqu'à dimanche.`,
			}},
			{Locale: "de", Template: &deliveryv1.MessageTemplate{
				Title: `Hallo {{firstName | required}}!`,
				Body:  `Ihr {{tier}}-Rabatt wartet: 30 % bis Sonntag.`,
			}},
		},
		Delivery: &deliveryv1.DeliveryOptions{Ttl: durationpb.New(6 * time.Hour), Priority: deliveryv1.FcmPriority_FCM_PRIORITY_HIGH},
	}
}
