// Command loadclient is the load generator of `make bench-kube` (benches/kube/bench_kube.py): 1 KiB
// Secrets through a real kube-apiserver with client-go, its client-side rate limiter off (the default
// 5 QPS would cap every figure), protobuf on the wire and one HTTP/2 connection shared by all clients,
// as controllers use it. Each mode prints one JSON object on stdout; errors are counted, not fatal,
// except when the first request fails.
//
//	loadclient -kubeconfig F create -clients 16 -duration 5s -namespace bench -prefix c16-
//	loadclient -kubeconfig F fill   -clients 64 -from 0 -count 5000 -namespace bench
//	loadclient -kubeconfig F get    -clients 16 -duration 5s -namespace bench -count 5000
//	loadclient -kubeconfig F list   -repeat 10 -namespace bench -expect 5000
//	loadclient -kubeconfig F await-list -namespace bench -expect 5000 -timeout 600s
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"
)

// result is what every mode prints: operations, errors (with the first error's text), elapsed
// seconds and latency percentiles in milliseconds of the successful operations.
type result struct {
	Mode       string  `json:"mode"`
	Clients    int     `json:"clients"`
	Ops        int     `json:"ops"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"per_second"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	Items      int     `json:"items,omitempty"`
}

// recorder collects per-client latencies without sharing a lock on the hot path.
type recorder struct {
	mu        sync.Mutex
	latencies []time.Duration
	errors    atomic.Int64
	first     atomic.Value
}

func (r *recorder) add(own []time.Duration) {
	r.mu.Lock()
	r.latencies = append(r.latencies, own...)
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	r.errors.Add(1)
	r.first.CompareAndSwap(nil, err.Error())
}

func (r *recorder) result(mode string, clients int, elapsed time.Duration) result {
	slices.Sort(r.latencies)
	pct := func(p float64) float64 {
		if len(r.latencies) == 0 {
			return 0
		}
		i := int(p * float64(len(r.latencies)-1))
		return float64(r.latencies[i].Microseconds()) / 1000
	}
	out := result{Mode: mode, Clients: clients, Ops: len(r.latencies), Errors: r.errors.Load(),
		Seconds: elapsed.Seconds(), PerSecond: float64(len(r.latencies)) / elapsed.Seconds(),
		P50Ms: pct(0.50), P99Ms: pct(0.99), MaxMs: pct(1)}
	if first, ok := r.first.Load().(string); ok {
		out.FirstError = first
	}
	return out
}

func secret(name string, size int) *corev1.Secret {
	value := make([]byte, size)
	for i := range value {
		value[i] = byte('a' + rand.IntN(26))
	}
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"value": value}}
}

// closedLoop runs `clients` callers, each issuing its next operation when the previous one
// returns, until the deadline or until `next` says there is no more work.
func closedLoop(clients int, deadline time.Time, op func(client, i int) error, next func() (int, bool)) (*recorder, time.Duration) {
	rec := &recorder{}
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := make([]time.Duration, 0, 1024)
			for !time.Now().After(deadline) {
				i, ok := next()
				if !ok {
					break
				}
				t0 := time.Now()
				if err := op(c, i); err != nil {
					rec.fail(err)
					continue
				}
				own = append(own, time.Since(t0))
			}
			rec.add(own)
		}()
	}
	wg.Wait()
	return rec, time.Since(start)
}

func counter(limit int) func() (int, bool) {
	var n atomic.Int64
	return func() (int, bool) {
		i := int(n.Add(1) - 1)
		return i, limit < 0 || i < limit
	}
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of a client the API server does not throttle (system:masters)")
	flag.Parse()
	if *kubeconfig == "" || flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: loadclient -kubeconfig FILE create|fill|get|list|await-list [flags]")
		os.Exit(2)
	}
	mode := flag.Arg(0)
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	clients := fs.Int("clients", 1, "concurrent callers")
	duration := fs.Duration("duration", 5*time.Second, "measured time (create, get)")
	namespace := fs.String("namespace", "bench", "namespace of the Secrets")
	prefix := fs.String("prefix", "s-", "Secret name prefix (create)")
	size := fs.Int("size", 1024, "bytes of the Secret's value")
	from := fs.Int("from", 0, "first index (fill)")
	count := fs.Int("count", 0, "Secrets to write (fill) or to read among (get)")
	repeat := fs.Int("repeat", 10, "full lists (list)")
	expect := fs.Int("expect", -1, "items a full list must hold (list, await-list)")
	timeout := fs.Duration("timeout", 600*time.Second, "how long to retry (await-list)")
	if err := fs.Parse(flag.Args()[1:]); err != nil {
		os.Exit(2)
	}

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadclient: kubeconfig %s: %v\n", *kubeconfig, err)
		os.Exit(1)
	}
	config.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	config.ContentType = "application/vnd.kubernetes.protobuf"
	config.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	config.Timeout = 60 * time.Second
	cs, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadclient: client: %v\n", err)
		os.Exit(1)
	}
	secrets := cs.CoreV1().Secrets(*namespace)
	ctx := context.Background()
	name := func(i int) string { return fmt.Sprintf("s-%06d", i) }

	var out result
	switch mode {
	case "create":
		rec, elapsed := closedLoop(*clients, time.Now().Add(*duration), func(c, i int) error {
			_, err := secrets.Create(ctx, secret(fmt.Sprintf("%s%07d", *prefix, i), *size), metav1.CreateOptions{})
			return err
		}, counter(-1))
		out = rec.result(mode, *clients, elapsed)
	case "fill":
		next := counter(*count)
		rec, elapsed := closedLoop(*clients, time.Now().Add(24*time.Hour), func(c, i int) error {
			_, err := secrets.Create(ctx, secret(name(*from+i), *size), metav1.CreateOptions{})
			return err
		}, next)
		out = rec.result(mode, *clients, elapsed)
	case "get":
		if *count < 1 {
			fmt.Fprintln(os.Stderr, "loadclient: get needs -count")
			os.Exit(2)
		}
		rec, elapsed := closedLoop(*clients, time.Now().Add(*duration), func(c, i int) error {
			_, err := secrets.Get(ctx, name(rand.IntN(*count)), metav1.GetOptions{})
			return err
		}, counter(-1))
		out = rec.result(mode, *clients, elapsed)
	case "list":
		var items atomic.Int64
		rec, elapsed := closedLoop(1, time.Now().Add(24*time.Hour), func(c, i int) error {
			l, err := secrets.List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			items.Store(int64(len(l.Items)))
			if *expect >= 0 && len(l.Items) != *expect {
				return fmt.Errorf("list gave %d items, expected %d", len(l.Items), *expect)
			}
			return nil
		}, counter(*repeat))
		out = rec.result(mode, 1, elapsed)
		out.Items = int(items.Load())
	case "await-list":
		// The first full list that succeeds after an API server start: retried until it does.
		start := time.Now()
		rec := &recorder{}
		for {
			t0 := time.Now()
			l, err := secrets.List(ctx, metav1.ListOptions{})
			if err == nil && (*expect < 0 || len(l.Items) == *expect) {
				rec.latencies = append(rec.latencies, time.Since(t0))
				out = rec.result(mode, 1, time.Since(start))
				out.Items = len(l.Items)
				break
			}
			if err == nil {
				err = fmt.Errorf("list gave %d items, expected %d", len(l.Items), *expect)
			}
			rec.fail(err)
			if time.Since(start) > *timeout {
				out = rec.result(mode, 1, time.Since(start))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	default:
		fmt.Fprintf(os.Stderr, "loadclient: unknown mode %q\n", mode)
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
	if out.Ops == 0 {
		os.Exit(1)
	}
}
