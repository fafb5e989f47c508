package natsx_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// pki is a throwaway certificate authority with a server certificate for
// 127.0.0.1 and nats.test and a client certificate, written as PEM files.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	pool                                                 *x509.CertPool
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "switchboard test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := pki{caFile: writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (certFile, keyFile string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"nats.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", kb)
	}
	p.serverCert, p.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	f := filepath.Join(dir, name)
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestConnectTLSAndNKey: TLS against a server whose certificate a private
// CA signed (server name checked), mutual TLS, and nkey authentication,
// each against a real nats-server that requires it.
func TestConnectTLSAndNKey(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := newPKI(t)
	serverTLS := func(o *server.Options, clientCerts bool) {
		cert, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
		if err != nil {
			t.Fatal(err)
		}
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		o.TLS, o.TLSTimeout = true, 5
		if clientCerts {
			o.TLSConfig.ClientAuth, o.TLSConfig.ClientCAs = tls.RequireAndVerifyClientCert, p.pool
			o.TLSVerify = true
		}
	}
	tlsURL := authServer(t, func(o *server.Options) { serverTLS(o, false) })
	mtlsURL := authServer(t, func(o *server.Options) { serverTLS(o, true) })

	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	dir := t.TempDir()
	seedFile, otherSeedFile := filepath.Join(dir, "user.nk"), filepath.Join(dir, "other.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherSeedFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	nkeyURL := authServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })

	tests := []struct {
		name string
		cfg  config.NATS
		fail string // "" = connects; else a part of the error
	}{
		{"tls with the CA", config.NATS{URL: tlsURL, TLS: &config.TLS{CAFile: p.caFile}}, ""},
		{"tls with the CA and a server name", config.NATS{URL: tlsURL, TLS: &config.TLS{CAFile: p.caFile, ServerName: "nats.test"}}, ""},
		{"tls without the CA", config.NATS{URL: tlsURL, TLS: &config.TLS{}}, "certificate"},
		{"tls with the wrong server name", config.NATS{URL: tlsURL, TLS: &config.TLS{CAFile: p.caFile, ServerName: "other.test"}}, "certificate"},
		{"tls with a missing CA file", config.NATS{URL: tlsURL, TLS: &config.TLS{CAFile: filepath.Join(dir, "nope.pem")}}, "nope.pem"},
		{"mutual tls", config.NATS{URL: mtlsURL, TLS: &config.TLS{CAFile: p.caFile, CertFile: p.clientCert, KeyFile: p.clientKey}}, ""},
		{"mutual tls without a client certificate", config.NATS{URL: mtlsURL, TLS: &config.TLS{CAFile: p.caFile}}, "127.0.0.1"},
		{"nkey", config.NATS{URL: nkeyURL, NKeySeedFile: seedFile}, ""},
		{"another nkey", config.NATS{URL: nkeyURL, NKeySeedFile: otherSeedFile}, "authorization"},
		{"missing nkey seed file", config.NATS{URL: nkeyURL, NKeySeedFile: filepath.Join(dir, "nope.nk")}, "nats nkey seed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			nc, err := natsx.Connect(ctx, tt.cfg, "test", log)
			if tt.fail == "" {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer nc.Close()
				if err := nc.Publish("x", nil); err != nil || nc.Flush() != nil {
					t.Errorf("publish: %v", err)
				}
				if _, err := nc.TLSConnectionState(); tt.cfg.TLS != nil && err != nil {
					t.Errorf("the connection is not TLS: %v", err)
				}
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("Connect succeeded")
			}
			if !strings.Contains(strings.ToLower(err.Error()), tt.fail) {
				t.Errorf("error %q does not mention %q", err, tt.fail)
			}
			if strings.Contains(err.Error(), string(seed)) || strings.Contains(err.Error(), string(otherSeed)) {
				t.Errorf("error %q leaks a seed", err)
			}
		})
	}
}

// TestConnectCredsFile: a creds file (user JWT and seed) against a server
// in operator mode that trusts the account which signed the user.
func TestConnectCredsFile(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	op, _ := nkeys.CreateOperator()
	opPub, _ := op.PublicKey()
	opClaims := jwt.NewOperatorClaims(opPub)
	if _, err := opClaims.Encode(op); err != nil {
		t.Fatal(err)
	}
	acc, _ := nkeys.CreateAccount()
	accPub, _ := acc.PublicKey()
	accJWT, err := jwt.NewAccountClaims(accPub).Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	creds := func(signer nkeys.KeyPair) string {
		user, _ := nkeys.CreateUser()
		userPub, _ := user.PublicKey()
		seed, _ := user.Seed()
		userJWT, err := jwt.NewUserClaims(userPub).Encode(signer)
		if err != nil {
			t.Fatal(err)
		}
		b, err := jwt.FormatUserConfig(userJWT, seed)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "user.creds")
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(accPub, accJWT); err != nil {
		t.Fatal(err)
	}
	url := authServer(t, func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
		o.AccountResolver = resolver
	})
	stranger, _ := nkeys.CreateAccount() // an account the server does not know

	for _, tt := range []struct {
		name string
		file string
		ok   bool
	}{
		{"user of a trusted account", creds(acc), true},
		{"user of an unknown account", creds(stranger), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			nc, err := natsx.Connect(ctx, config.NATS{URL: url, CredsFile: tt.file}, "test", log)
			if tt.ok != (err == nil) {
				t.Fatalf("Connect: %v, want success %v", err, tt.ok)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "127.0.0.1") {
					t.Errorf("error %q does not name the server", err)
				}
				return
			}
			defer nc.Close()
			if err := nc.Publish("x", nil); err != nil || nc.Flush() != nil {
				t.Errorf("publish: %v", err)
			}
		})
	}
}
