// Command tailguard-oracle runs the real Tailscale container entrypoint
// (containerboot + tailscaled + tailscale, built from the Go module proxy) the
// way a kubelet and a container runtime would run one pod, against a local
// Tailscale control server, and reports what really happened.
//
// Usage:
//
//	tailguard-oracle run [--rootfs DIR] [-v] < case.json > outcome.json
//	tailguard-oracle version
//
// The other sub-commands (inner, sandbox, shim, exec) are internal: the
// binary re-executes itself inside the namespaces it creates.
// See README.md for the protocol.
package main

import (
	"fmt"
	"os"
	"runtime"
)

// srcHash is set by scripts/build-oracle.sh (-ldflags -X main.srcHash=...) so
// the build script can tell a stale cached binary from a current one.
var srcHash = "dev"

// tailscaleVersion is the tailscale.com module version this oracle drives.
const tailscaleVersion = "v1.96.4"

func init() {
	// The internal sub-commands change per-thread state (namespaces,
	// capability bounding set) and then exec: keep the main goroutine on the
	// main thread so every such change applies to the thread that execs.
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "shim", "exec", "sandbox", "netexec":
			runtime.LockOSThread()
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		os.Exit(cmdRun(os.Args[2:]))
	case "version":
		fmt.Printf("tailguard-oracle %s tailscale.com %s\n", srcHash, tailscaleVersion)
		return
	case "inner":
		err = cmdInner(os.Args[2:])
	case "sandbox":
		err = cmdSandbox(os.Args[2:])
	case "shim":
		err = cmdShim(os.Args[2:])
	case "exec":
		err = cmdExec(os.Args[2:])
	case "netexec":
		err = cmdNetExec(os.Args[2:])
	case "http-get":
		err = cmdHTTPGet(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tailguard-oracle %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: tailguard-oracle run [--rootfs DIR] [-v] < case.json > outcome.json")
	fmt.Fprintln(os.Stderr, "       tailguard-oracle version")
	os.Exit(2)
}
