// Package secret encrypts credentials at rest with AES-256-GCM. The key
// comes from a file or an environment variable (base64 of 32 bytes), never
// from the data dir in production: a copy of the data dir alone reveals
// nothing. Every sealed value names what it belongs to as associated data,
// so a sealed blob moved to another record fails to open.
package secret

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// KeySize is the AES-256 key size in bytes.
const KeySize = 32

// version prefixes every sealed value so the format can change later.
const version byte = 1

// ErrOpen is returned when a sealed value cannot be opened: wrong key, wrong
// associated data, or tampering.
var ErrOpen = errors.New("secret: cannot decrypt (wrong key, or the value was altered or moved)")

// Box seals and opens values with one key. It is safe for concurrent use.
type Box struct {
	aead cipher.AEAD
}

// NewBox returns a Box for a 32-byte key.
func NewBox(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secret: key must be %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	return &Box{aead: aead}, nil
}

// Seal encrypts plaintext bound to aad: version, random nonce, ciphertext.
func (b *Box) Seal(plaintext, aad []byte) []byte {
	out := make([]byte, 1+b.aead.NonceSize(), 1+b.aead.NonceSize()+len(plaintext)+b.aead.Overhead())
	out[0] = version
	if _, err := rand.Read(out[1:]); err != nil {
		// crypto/rand does not fail on supported platforms.
		panic("secret: system random source failed: " + err.Error())
	}
	return b.aead.Seal(out, out[1:], plaintext, aad)
}

// Open decrypts a value sealed with the same key and aad.
func (b *Box) Open(sealed, aad []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < 1+n+b.aead.Overhead() || sealed[0] != version {
		return nil, ErrOpen
	}
	plain, err := b.aead.Open(nil, sealed[1:1+n], sealed[1+n:], aad)
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}

// ParseKey reads a key given as base64 (standard or URL alphabet, padded or
// not) of exactly 32 bytes; surrounding whitespace is ignored.
func ParseKey(text []byte) ([]byte, error) {
	s := string(bytes.TrimSpace(text))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(s); err == nil {
			if len(key) != KeySize {
				return nil, fmt.Errorf("secret: the key must be base64 of %d bytes, got %d bytes", KeySize, len(key))
			}
			return key, nil
		}
	}
	return nil, fmt.Errorf("secret: the key must be base64 of %d bytes (e.g. `openssl rand -base64 32`)", KeySize)
}

// ReadKeyFile reads a key file holding the base64 key.
func ReadKeyFile(path string) ([]byte, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secret: read key file: %w", err)
	}
	key, err := ParseKey(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// LoadOrCreateKeyFile reads the key file at path, creating it with a new
// random key (mode 0600) when it does not exist. It reports whether it
// created the file. Meant for development runs only: a key next to the data
// it protects protects nothing against a copy of the folder.
func LoadOrCreateKeyFile(path string) (key []byte, created bool, err error) {
	key, err = ReadKeyFile(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, false, fmt.Errorf("secret: generate key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("secret: create key dir: %w", err)
	}
	// O_EXCL: never overwrite a key another process has just written.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			key, err = ReadKeyFile(path)
			return key, false, err
		}
		return nil, false, fmt.Errorf("secret: write key file: %w", err)
	}
	_, werr := f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("secret: write key file: %w", err)
	}
	return key, true, nil
}
