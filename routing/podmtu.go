package routing

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// maxNamedPodInterfaces bounds how many interfaces the pod MTU warning
// lists; a node with a hundred pods would otherwise print a hundred veths
// that all say the same.
const maxNamedPodInterfaces = 8

// podInterfaces returns the names of the interfaces that face the local
// pods, sorted: those holding a subnet address inside an own pod CIDR (a
// CNI bridge such as cni0 with 10.244.1.1/24), the interfaces enslaved to
// such a bridge (the pods' veths), and those the main table routes a part
// of an own pod CIDR to without a gateway (Calico's per-pod cali* /32
// routes). A single address (/32, /128) does not make an interface face
// pods: flannel's VXLAN device holds its node's 10.244.1.0/32 and leads to
// the other nodes. The tunnel interface and lo are not pod interfaces.
func (o Options) podInterfaces(own []netip.Prefix, w observed) []string {
	if len(own) == 0 {
		return nil
	}
	// inOwn reports whether p lies inside an own pod CIDR.
	inOwn := func(p netip.Prefix) bool {
		for _, c := range own {
			if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
				return true
			}
		}
		return false
	}
	skip := func(dev string) bool { return dev == "" || dev == o.Interface || dev == "lo" }
	facing := map[string]bool{}
	for _, l := range w.Links {
		if skip(l.Name) {
			continue
		}
		for _, a := range l.Addrs {
			if a.Bits() < a.Addr().BitLen() && inOwn(netip.PrefixFrom(a.Addr(), a.Addr().BitLen())) {
				facing[l.Name] = true
			}
		}
	}
	bridges := len(facing) > 0
	for _, l := range w.Links {
		if bridges && !skip(l.Name) && l.Master != "" && facing[l.Master] {
			facing[l.Name] = true
		}
	}
	for _, r := range w.Connected {
		if !skip(r.Dev) && inOwn(r.Dst) {
			facing[r.Dev] = true
		}
	}
	names := make([]string, 0, len(facing))
	for n := range facing {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// podMTUWarning names the local pod interfaces whose MTU exceeds podMTU
// (the tunnel's): a pod's full-sized packet to another node does not fit
// the tunnel, and unless ICMP "fragmentation needed" / "packet too big"
// reaches the sender it is lost. "" when all fit, or when podMTU or own is
// unknown.
func (o Options) podMTUWarning(own []netip.Prefix, w observed, podMTU int) string {
	if podMTU <= 0 {
		return ""
	}
	var over []string
	for _, name := range o.podInterfaces(own, w) {
		if l, ok := w.link(name); ok && l.MTU > podMTU {
			over = append(over, fmt.Sprintf("%s (MTU %d)", l.Name, l.MTU))
		}
	}
	if len(over) == 0 {
		return ""
	}
	list := strings.Join(over[:min(len(over), maxNamedPodInterfaces)], ", ")
	if len(over) > maxNamedPodInterfaces {
		list += fmt.Sprintf(" and %d more", len(over)-maxNamedPodInterfaces)
	}
	return fmt.Sprintf("pod interface MTU above Pod MTU %d: %s carry the pod CIDRs %s; pods' full-sized packets to other nodes "+
		"do not fit the tunnel and are lost where ICMP is filtered (TCP stalls); set the CNI's MTU to %d or less",
		podMTU, list, joinList(own), podMTU)
}

// joinList formats addresses or prefixes as "a, b".
func joinList[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}
