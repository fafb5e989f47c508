package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/switchboard-llm/switchboard/services/internal/config"
)

// keyring checks bearer tokens against the configured API keys. It holds
// only their SHA-256 digests, and compares every one in constant time, so
// neither a key nor how much of it matched leaks through timing.
type keyring struct {
	names  []string
	hashes [][sha256.Size]byte
}

func newKeyring(keys []config.APIKey) *keyring {
	k := &keyring{}
	for _, key := range keys {
		k.names = append(k.names, key.Name)
		k.hashes = append(k.hashes, sha256.Sum256([]byte(key.Key.Value())))
	}
	return k
}

// enabled reports whether any key is configured (none: no auth).
func (k *keyring) enabled() bool { return len(k.hashes) > 0 }

// check returns the name of the key r carries as "Authorization: Bearer
// <key>", or an *Error for a missing or unknown key.
func (k *keyring) check(r *http.Request) (string, *Error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", &Error{Status: http.StatusUnauthorized, Type: typeAuthentication, Code: "missing_api_key",
			Message: `missing API key: send "Authorization: Bearer <key>"`}
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", &Error{Status: http.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key",
			Message: `malformed Authorization header: want "Bearer <key>"`}
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	match := -1
	for i := range k.hashes {
		if subtle.ConstantTimeCompare(sum[:], k.hashes[i][:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", &Error{Status: http.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key",
			Message: "incorrect API key"}
	}
	return k.names[match], nil
}
