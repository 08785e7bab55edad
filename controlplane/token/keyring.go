package token

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Keyring holds signing and verification keys by kid. Several keys may be
// live at once (rotation): it signs with the newest key that can sign and
// verifies with whichever key a token names. A Keyring never changes after
// it is built and is safe for concurrent use.
type Keyring struct {
	keys   map[string]checked
	ids    []string // sorted
	signer string   // kid of the signing key; "" when all keys only verify
}

// NewKeyring builds a keyring from keys, which must have distinct IDs. The
// signing key is the one with the latest Created among those that can
// sign; on a tie, the later argument wins.
func NewKeyring(keys ...Key) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("keyring: no keys")
	}
	kr := &Keyring{keys: make(map[string]checked, len(keys))}
	var newest time.Time
	for _, k := range keys {
		c, err := prepare(k)
		if err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		if _, dup := kr.keys[c.ID]; dup {
			return nil, fmt.Errorf("keyring: key %q appears twice", c.ID)
		}
		kr.keys[c.ID] = c
		kr.ids = append(kr.ids, c.ID)
		if c.sign != nil && (kr.signer == "" || !c.Created.Before(newest)) {
			kr.signer, newest = c.ID, c.Created
		}
	}
	slices.Sort(kr.ids)
	return kr, nil
}

// KeyIDs lists the kids in the keyring, sorted.
func (k *Keyring) KeyIDs() []string { return slices.Clone(k.ids) }

// SigningKeyID is the kid SignAgent uses, or "" if no key can sign.
func (k *Keyring) SigningKeyID() string { return k.signer }

// KeyFileExt ends the name of every key file LoadKeyring reads.
const KeyFileExt = ".json"

// maxKeyFileSize bounds a key file; real ones are well under 1 KiB.
const maxKeyFileSize = 64 << 10

// keyFile is the on-disk form of a Key (see the package documentation).
type keyFile struct {
	KID        string    `json:"kid"`
	Alg        string    `json:"alg"`
	Created    time.Time `json:"created,omitzero"`
	Secret     []byte    `json:"secret,omitempty"`
	PrivateKey string    `json:"private_key,omitempty"`
	PublicKey  string    `json:"public_key,omitempty"`
}

// LoadKeyring reads a keyring from path: a directory of "<kid>.json" key
// files, or a single key file. It reads everything or fails, so a server
// reloading its keys keeps the previous keyring on error.
func LoadKeyring(path string) (*Keyring, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		if files, err = keyFiles(path); err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("keyring: no key files (*%s) in %s", KeyFileExt, path)
		}
	}
	keys := make([]Key, 0, len(files))
	for _, f := range files {
		k, err := readKeyFile(f)
		if err != nil {
			return nil, fmt.Errorf("keyring: %s: %w", f, err)
		}
		keys = append(keys, k)
	}
	return NewKeyring(keys...)
}

// keyFiles lists the key files in dir, sorted by name. Symlinks are
// followed (Kubernetes mounts secrets as links); dotfiles are skipped.
func keyFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, KeyFileExt) {
			continue
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if st.Mode().IsRegular() {
			files = append(files, p)
		}
	}
	return files, nil
}

func readKeyFile(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return Key{}, err
	}
	defer func() { _ = f.Close() }()
	raw, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return Key{}, err
	}
	if len(raw) > maxKeyFileSize {
		return Key{}, fmt.Errorf("larger than %d bytes", maxKeyFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var kf keyFile
	if err := dec.Decode(&kf); err != nil {
		return Key{}, fmt.Errorf("decode: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Key{}, errors.New("decode: data after the key object")
	}
	if want := strings.TrimSuffix(filepath.Base(path), KeyFileExt); kf.KID != want {
		return Key{}, fmt.Errorf("kid %q does not match the file name (want %q)", kf.KID, want)
	}
	k := Key{ID: kf.KID, Alg: kf.Alg, Secret: kf.Secret, Created: kf.Created}
	if kf.PrivateKey != "" {
		if k.Private, err = parsePrivateKey(kf.PrivateKey); err != nil {
			return Key{}, fmt.Errorf("private_key: %w", err)
		}
	}
	if kf.PublicKey != "" {
		if k.Public, err = parsePublicKey(kf.PublicKey); err != nil {
			return Key{}, fmt.Errorf("public_key: %w", err)
		}
	}
	// Checked here too, so the error names the file.
	if _, err := prepare(k); err != nil {
		return Key{}, err
	}
	return k, nil
}

// pemBlock decodes the single PEM block in s.
func pemBlock(s string) (*pem.Block, error) {
	b, rest := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("data after the PEM block")
	}
	return b, nil
}

// parsePrivateKey reads a PKCS#8 "PRIVATE KEY", or a SEC 1 "EC PRIVATE
// KEY" as openssl ecparam writes it.
func parsePrivateKey(s string) (crypto.Signer, error) {
	b, err := pemBlock(s)
	if err != nil {
		return nil, err
	}
	var key any
	switch b.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want \"PRIVATE KEY\"", b.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T cannot sign", key)
	}
	return signer, nil
}

// parsePublicKey reads a PKIX "PUBLIC KEY".
func parsePublicKey(s string) (crypto.PublicKey, error) {
	b, err := pemBlock(s)
	if err != nil {
		return nil, err
	}
	if b.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("PEM block is %q, want \"PUBLIC KEY\"", b.Type)
	}
	return x509.ParsePKIXPublicKey(b.Bytes)
}

// WriteKey saves k in dir (created, mode 0700, if missing) as
// "<kid>.json", mode 0600, for LoadKeyring. The file appears atomically
// and an existing key file is never replaced. A private key is written
// with its public key, so deleting the "private_key" line leaves a
// verify-only copy.
func WriteKey(dir string, k Key) error {
	c, err := prepare(k)
	if err != nil {
		return err
	}
	kf := keyFile{KID: c.ID, Alg: c.Alg, Secret: c.Secret}
	if !c.Created.IsZero() {
		kf.Created = c.Created.UTC()
	}
	if c.Alg != AlgHS256 {
		if c.Private != nil {
			der, err := x509.MarshalPKCS8PrivateKey(c.Private)
			if err != nil {
				return fmt.Errorf("key %q: cannot save the private key: %w", c.ID, err)
			}
			kf.PrivateKey = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		}
		der, err := x509.MarshalPKIXPublicKey(c.Public)
		if err != nil {
			return fmt.Errorf("key %q: cannot save the public key: %w", c.ID, err)
		}
		kf.PublicKey = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return fmt.Errorf("key %q: %w", c.ID, err)
	}
	data = append(data, '\n')
	return writeNew(dir, c.ID+KeyFileExt, data)
}

// writeNew writes name in dir through a temporary dotfile (which
// LoadKeyring ignores) and a rename, refusing to replace an existing file.
func writeNew(dir, name string, data []byte) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	final := filepath.Join(dir, name)
	if _, err := os.Lstat(final); err == nil {
		return fmt.Errorf("%s already exists; remove it first or pick another kid", final)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), final); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // make the rename durable; not all systems support it
		_ = d.Close()
	}
	return nil
}
