// Command grpcclient is a KMS v2 client that dials the socket the way kube-apiserver did before
// 1.32: grpc.Dial with the bare socket path as the target and a unix dialer, so grpc-go sends
// that path as the HTTP/2 :authority (percent-encoded by current grpc-go, verbatim by older
// ones; -authority sends any value). It runs Status, Encrypt of 32 random bytes and Decrypt,
// and prints one JSON object; exit 0 only if all three succeed and the round trip holds.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"
)

func main() {
	socket := flag.String("socket", "", "path of the KMS unix socket")
	authority := flag.String("authority", "", "send this :authority instead of the socket path")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "usage: grpcclient -socket PATH [-authority VALUE]")
		os.Exit(2)
	}
	if err := run(*socket, *authority); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(socket, authority string) error {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
	}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	//nolint:staticcheck // grpc.Dial is what kube-apiserver used; its passthrough target is the point.
	conn, err := grpc.Dial(socket, opts...)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	client := kmsapi.NewKeyManagementServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	status, err := client.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil {
		return fmt.Errorf("Status: %w", err)
	}
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "grpc-go-client"})
	if err != nil {
		return fmt.Errorf("Encrypt: %w", err)
	}
	dec, err := client.Decrypt(ctx, &kmsapi.DecryptRequest{
		Ciphertext:  enc.Ciphertext,
		Uid:         "grpc-go-client",
		KeyId:       enc.KeyId,
		Annotations: enc.Annotations,
	})
	if err != nil {
		return fmt.Errorf("Decrypt: %w", err)
	}
	result := map[string]any{
		"target":         conn.Target(),
		"version":        status.Version,
		"healthz":        status.Healthz,
		"status_key_id":  status.KeyId,
		"encrypt_key_id": enc.KeyId,
		"round_trip":     bytes.Equal(dec.Plaintext, seed),
	}
	out, err := json.Marshal(result)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	if status.Healthz != "ok" || status.KeyId != enc.KeyId || !bytes.Equal(dec.Plaintext, seed) {
		return fmt.Errorf("unexpected results: %s", out)
	}
	return nil
}
