package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/tailscale/netlink"
	"golang.org/x/net/dns/dnsmessage"
)

// clusterDNSIP is the cluster DNS service address in the pods' resolv.conf.
const clusterDNSIP = "10.96.0.10"

// clusterDNS emulates the cluster's DNS service for the one Service that
// exists: kubernetes.default.svc.cluster.local resolves to the address of the
// kubernetes service (the apiserver relay when the case has one), and
// Tailscale's control plane names to the local control server. Other names
// in cluster.local are NXDOMAIN; other names get SERVFAIL, as from a cluster
// DNS whose upstream is unreachable.
type clusterDNS struct {
	names map[string]netip.Addr // FQDN with trailing dot -> IPv4
}

func (d *clusterDNS) answer(req []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	name := strings.ToLower(q.Name.String())
	resp := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired, RecursionAvailable: true, Authoritative: true}
	ip, known := d.names[name]
	switch {
	case known:
		resp.RCode = dnsmessage.RCodeSuccess
	case name == "cluster.local." || strings.HasSuffix(name, ".cluster.local."):
		resp.RCode = dnsmessage.RCodeNameError
	default:
		resp.RCode = dnsmessage.RCodeServerFailure
		resp.Authoritative = false
	}
	b := dnsmessage.NewBuilder(nil, resp)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	b.Question(q)
	if known && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		b.StartAnswers()
		b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 30}, dnsmessage.AResource{A: ip.As4()})
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// serveClusterDNS adds the cluster DNS address to the node's loopback and
// answers on it and on the node address (the node's own resolver), UDP and TCP.
func serveClusterDNS(kubeIP string) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := addAddr(lo, clusterDNSIP+"/32"); err != nil {
		return err
	}
	d := &clusterDNS{names: map[string]netip.Addr{
		"kubernetes.default.svc.cluster.local.": netip.MustParseAddr(kubeIP),
		serviceName + ".":                       netip.MustParseAddr(serviceIP),
	}}
	for _, h := range defaultControlHosts {
		d.names[h+"."] = netip.MustParseAddr(nodeIP)
	}
	for _, ip := range []string{clusterDNSIP, nodeIP} {
		addr := net.JoinHostPort(ip, "53")
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 4096)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				if out := d.answer(buf[:n]); out != nil {
					pc.WriteTo(out, from)
				}
			}
		}()
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					for {
						var l [2]byte
						if _, err := io.ReadFull(c, l[:]); err != nil {
							return
						}
						req := make([]byte, binary.BigEndian.Uint16(l[:]))
						if _, err := io.ReadFull(c, req); err != nil {
							return
						}
						out := d.answer(req)
						if out == nil {
							return
						}
						binary.BigEndian.PutUint16(l[:], uint16(len(out)))
						if _, err := c.Write(append(l[:], out...)); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	return nil
}
