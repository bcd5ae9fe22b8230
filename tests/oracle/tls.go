package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// defaultControlHosts are the names of Tailscale's public control plane. The
// case's cluster DNS resolves them to the node, where the local control server
// also serves HTTPS with a certificate from a per-case CA that the containers'
// CA bundle trusts: a script that runs `tailscale up` without --login-server
// (the default control URL) reaches the local control server too.
var defaultControlHosts = []string{"controlplane.tailscale.com", "login.tailscale.com"}

// caseCA is a throw-away certificate authority for one case.
type caseCA struct {
	certPEM []byte
	leaf    tls.Certificate
}

func newCaseCA() (*caseCA, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tailguard-oracle case CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: defaultControlHosts[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     defaultControlHosts,
		// The control server, and "the internet" of traffic cases.
		IPAddresses: []net.IP{net.ParseIP(nodeIP), net.ParseIP(internetIP)},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	return &caseCA{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		leaf:    tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey},
	}, nil
}

// serveTLS serves h over HTTPS (HTTP/1.1 only: the control protocol upgrades
// the connection) on nodeIP:443.
func (ca *caseCA) serveTLS(h http.Handler) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(nodeIP, "443"))
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:      h,
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{ca.leaf}, NextProtos: []string{"http/1.1"}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	go srv.Serve(tls.NewListener(ln, srv.TLSConfig))
	return nil
}

// writeBundle writes the image's CA bundle plus the case CA, to be mounted
// over the containers' /etc/ssl/certs/ca-certificates.crt.
func (ca *caseCA) writeBundle(rootfs, dir string) (string, error) {
	bundle, _ := os.ReadFile(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt"))
	if len(bundle) > 0 && bundle[len(bundle)-1] != '\n' {
		bundle = append(bundle, '\n')
	}
	bundle = append(bundle, ca.certPEM...)
	p := filepath.Join(dir, "ca-certificates.crt")
	return p, os.WriteFile(p, bundle, 0o644)
}
