package dapr

import (
	"context"
	"io"
	"net"
	"sync"
)

// Forward listens on a loopback port and passes each connection on to the
// address target names at that moment: a Service in front of a workload
// whose process, and port, a restart replaces. It returns the address it
// listens on and serves until ctx ends.
func Forward(ctx context.Context, target func() string) (string, error) {
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		<-ctx.Done()
		_ = lis.Close()
	}()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go pipe(ctx, conn, target())
		}
	}()
	return lis.Addr().String(), nil
}

// pipe copies between conn and a new connection to addr until either ends.
func pipe(ctx context.Context, conn net.Conn, addr string) {
	defer conn.Close()
	upstream, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return
	}
	defer upstream.Close()
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(upstream, conn); closeWrite(upstream) })
	wg.Go(func() { _, _ = io.Copy(conn, upstream); closeWrite(conn) })
	wg.Wait()
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
