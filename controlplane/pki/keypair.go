package pki

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// KeyPair serves a certificate and key from disk that are not Berth's own:
// a public certificate for downstream clients (any issuer, no berth
// identity, no CA bundle). Like Reloader, a goroutine checks the files
// every interval and takes a changed pair only whole and only if it
// loads and matches; otherwise the error is logged and the previous pair
// stays in use. GetCertificate reads the current pair on every handshake.
type KeyPair struct {
	cert, key string
	logger    *slog.Logger

	cur atomic.Pointer[tls.Certificate]

	mu      sync.Mutex // serialises checks; guards seen and lastErr
	seen    [2]os.FileInfo
	lastErr string

	poll *poller
}

// NewKeyPair loads certFile (PEM, leaf first, then intermediates) and
// keyFile and checks them for change every interval until Close.
func NewKeyPair(certFile, keyFile string, interval time.Duration, logger *slog.Logger) (*KeyPair, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("certificate and key go together: %w", ErrInvalidFiles)
	}
	if interval <= 0 {
		return nil, errors.New("reload interval must be positive")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	k := &KeyPair{cert: certFile, key: keyFile, logger: logger}
	if err := k.check(true); err != nil {
		return nil, err
	}
	k.poll = startPoller(interval, func() { _ = k.check(false) })
	return k, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.cur.Load(), nil
}

// Reload re-reads the files now; on error the previous pair stays.
func (k *KeyPair) Reload() error { return k.check(true) }

// Close stops watching the files.
func (k *KeyPair) Close() { k.poll.Close() }

func (k *KeyPair) check(force bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var seen [2]os.FileInfo
	for i, p := range []string{k.cert, k.key} {
		fi, err := os.Stat(p)
		if err != nil {
			return k.failed(err)
		}
		seen[i] = fi
	}
	if !force && sameFiles(k.seen[:], seen[:]) {
		return nil
	}
	k.seen = seen
	cert, err := tls.LoadX509KeyPair(k.cert, k.key)
	if err != nil {
		return k.failed(fmt.Errorf("certificate %s, key %s: %w: %w", k.cert, k.key, ErrBadMaterial, err))
	}
	k.lastErr = ""
	if old := k.cur.Swap(&cert); old == nil || !old.Leaf.Equal(cert.Leaf) {
		k.logger.Info("certificate loaded", "file", k.cert, "subject", cert.Leaf.Subject.String(),
			"serial", cert.Leaf.SerialNumber.String(), "not_after", cert.Leaf.NotAfter)
	}
	return nil
}

func (k *KeyPair) failed(err error) error {
	if k.cur.Load() == nil {
		return err // the first load: the caller reports it
	}
	if msg := err.Error(); msg != k.lastErr {
		k.lastErr = msg
		k.logger.Error("certificate reload failed; keeping the previous one", "err", err)
	}
	return err
}

func sameFiles(old, now []os.FileInfo) bool {
	for i, fi := range now {
		o := old[i]
		if o == nil || !os.SameFile(o, fi) || !o.ModTime().Equal(fi.ModTime()) || o.Size() != fi.Size() {
			return false
		}
	}
	return true
}
