package routing

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The strict ingress filter, in nft syntax (the table is named after the
// instance's interface, see NFTTableName):
//
//	table inet wgmesh_wgmesh0 {
//		counter strict_drops {}
//		set strict4 { type ipv4_addr; flags interval; elements = { 10.244.2.0/24, ... } }
//		set strict6 { type ipv6_addr; flags interval; elements = { fd00:10:244:2::/64, ... } }
//		chain prerouting {
//			type filter hook prerouting priority raw;
//			meta nfproto ipv4 iifname != "wgmesh0" ip saddr @strict4 counter name "strict_drops" drop
//			meta nfproto ipv6 iifname != "wgmesh0" ip6 saddr @strict6 counter name "strict_drops" drop
//		}
//	}
//
// A packet whose source is a remote node's pod CIDR can only legitimately
// come out of the tunnel; arriving on any other interface it crossed the
// wire in plaintext (or is spoofed) and is dropped. The chain hooks
// prerouting at priority raw (-300): before conntrack (-200), so dropped
// packets never create connection state, and before mangle, DNAT and every
// filter chain of other tables, so no other rule set sees the packet first.
// The drop is final for the packet no matter what other tables would do.

// nftNetworkOffsets are the source address offset and length in the IPv4
// and IPv6 headers.
var nftSaddr = map[family]struct{ off, len uint32 }{v4: {12, 4}, v6: {8, 16}}

// A whole table goes to the kernel in one batch (one sendmsg), so that it
// applies atomically. A mesh of thousands of nodes makes that batch larger
// than the default socket send buffer (about 200 KiB), so the buffer is
// raised as the nft tool does, with SO_SNDBUFFORCE (root) or else as far as
// SO_SNDBUF allows. Within the batch, elements go in messages of
// nftElemChunk, far below the 64 KiB limit of one netlink attribute.
const (
	nftSndBuf    = 16 << 20
	nftElemChunk = 1024
)

func raiseSndBuf(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, nftSndBuf) != nil {
			// Best effort: a small mesh fits the default buffer anyway, and
			// a too large batch fails with an error naming the table.
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, nftSndBuf)
		}
	})
}

// addElements queues els for set in chunks.
func addElements(c *nftables.Conn, set *nftables.Set, els []nftables.SetElement, del bool) error {
	for len(els) > 0 {
		n := min(len(els), nftElemChunk)
		var err error
		if del {
			err = c.SetDeleteElements(set, els[:n])
		} else {
			err = c.SetAddElements(set, els[:n])
		}
		if err != nil {
			return fmt.Errorf("set %s: %w", set.Name, err)
		}
		els = els[n:]
	}
	return nil
}

func (k *kernel) nft() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(raiseSndBuf)}
	if k.ns != nsCurrent {
		opts = append(opts, nftables.WithNetNSFd(int(k.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables socket: %w", err)
	}
	return c, nil
}

func (k *kernel) nftTable() *nftables.Table {
	return &nftables.Table{Name: k.o.nftTableName(), Family: nftables.TableFamilyINet}
}

// observeFilter reads the instance's table into the model (nil when
// absent) and reports the legacy shared table when it is this instance's.
func (k *kernel) observeFilter() (*filter, string, error) {
	c, err := k.nft()
	if err != nil {
		return nil, "", err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, "", fmt.Errorf("list nftables tables: %w", err)
	}
	var legacy string
	if slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == LegacyNFTTable }) {
		ours, err := k.legacyOurs(c)
		if err != nil {
			return nil, "", err
		}
		if ours {
			legacy = LegacyNFTTable
		}
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == k.o.nftTableName() }) {
		return nil, legacy, nil
	}
	f, err := k.readFilter(c)
	return f, legacy, err
}

// legacyOurs reports whether the legacy shared table belongs to this
// instance: a rule of its prerouting chain carries, as user data, a rule
// signature naming our interface (see legacyOwner).
func (k *kernel) legacyOurs(c *nftables.Conn) (bool, error) {
	t := &nftables.Table{Name: LegacyNFTTable, Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(t, &nftables.Chain{Name: nftChain, Table: t})
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list rules of chain inet %s %s: %w", LegacyNFTTable, nftChain, err)
	}
	sigs := make([]string, 0, len(rules))
	for _, r := range rules {
		sigs = append(sigs, string(r.UserData))
	}
	return legacyOwner(sigs, k.o.Interface), nil
}

// readFilter reads the instance's table, which exists.
func (k *kernel) readFilter(c *nftables.Conn) (*filter, error) {
	t := k.nftTable()
	f := &filter{Table: t.Name}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains of table inet %s: %w", k.o.nftTableName(), err)
	}
	for _, ch := range chains {
		if ch.Table.Name != k.o.nftTableName() || ch.Name != nftChain {
			continue
		}
		f.Chain = ch.Type == nftables.ChainTypeFilter &&
			ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookPrerouting &&
			ch.Priority != nil && *ch.Priority == *nftables.ChainPriorityRaw
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain inet %s %s: %w", k.o.nftTableName(), nftChain, err)
		}
		for _, r := range rules {
			f.Rules = append(f.Rules, string(r.UserData))
		}
	}
	objs, err := c.GetObjects(t)
	if err != nil {
		return nil, fmt.Errorf("list objects of table inet %s: %w", k.o.nftTableName(), err)
	}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && co.Name == nftCounter {
			f.Counter = true
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list sets of table inet %s: %w", k.o.nftTableName(), err)
	}
	for _, s := range sets {
		ns := nftSet{Name: s.Name}
		// A set of unexpected name or type keeps family 0, which makes the
		// table's shape differ from any wanted one: it gets rebuilt.
		switch {
		case s.Name == nftSet4 && s.KeyType.Name == nftables.TypeIPAddr.Name && s.Interval:
			ns.Family = v4
		case s.Name == nftSet6 && s.KeyType.Name == nftables.TypeIP6Addr.Name && s.Interval:
			ns.Family = v6
		}
		if ns.Family != 0 {
			els, err := c.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("list elements of set inet %s %s: %w", k.o.nftTableName(), s.Name, err)
			}
			ns.Ranges = rangesOfIntervals(intervalsOfElements(els))
		}
		f.Sets = append(f.Sets, ns)
	}
	slices.SortFunc(f.Sets, func(a, b nftSet) int { return strings.Compare(a.Name, b.Name) })
	return f, nil
}

func intervalsOfElements(els []nftables.SetElement) []interval {
	var out []interval
	for _, e := range els {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out = append(out, interval{Key: a, End: e.IntervalEnd})
		}
	}
	return out
}

func elementsOf(rs []ipRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, i := range intervals(rs) {
		out = append(out, nftables.SetElement{Key: i.Key.AsSlice(), IntervalEnd: i.End})
	}
	return out
}

func nftSetOf(t *nftables.Table, s nftSet) *nftables.Set {
	key := nftables.TypeIPAddr
	if s.Family == v6 {
		key = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Name: s.Name, KeyType: key, Interval: true}
}

// putFilter (re)creates the whole table in one transaction: the add-delete-
// add sequence removes any previous version whatever state it is in, and the
// kernel applies the batch atomically, so there is no moment without the
// filter.
func (k *kernel) putFilter(f *filter) error {
	c, err := k.nft()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: f.Table, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	ch := c.AddChain(&nftables.Chain{
		Name: nftChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw,
	})
	c.AddObj(&nftables.CounterObj{Table: t, Name: nftCounter})
	for _, s := range f.Sets {
		set := nftSetOf(t, s)
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		if err := addElements(c, set, elementsOf(s.Ranges), false); err != nil {
			return err
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: dropExprs(s.Family, k.o.Interface, set), UserData: []byte(nftRuleSig(s.Family, k.o.Interface))})
	}
	return c.Flush()
}

// dropExprs is nftRuleSig as expressions.
func dropExprs(f family, iface string, set *nftables.Set) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if f == v6 {
		proto = unix.NFPROTO_IPV6
	}
	// Interface names are compared as the kernel stores them: IFNAMSIZ
	// bytes, NUL padded.
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, iface)
	sa := nftSaddr[f]
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: name},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: sa.off, Len: sa.len},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Objref{Type: int(unix.NFT_OBJECT_COUNTER), Name: nftCounter},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// updateSet changes a set's elements in one transaction; deletions go first
// in the batch so a new range may overlap an old one, and the batch commits
// atomically, so no packet sees a set in between.
func (k *kernel) updateSet(table string, s nftSet, add, del []ipRange) error {
	c, err := k.nft()
	if err != nil {
		return err
	}
	set := nftSetOf(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, s)
	if err := addElements(c, set, elementsOf(del), true); err != nil {
		return err
	}
	if err := addElements(c, set, elementsOf(add), false); err != nil {
		return err
	}
	return c.Flush()
}

// deleteTable deletes the table name (family inet) with everything in it.
func (k *kernel) deleteTable(name string) error {
	c, err := k.nft()
	if err != nil {
		return err
	}
	c.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	return ignore(c.Flush(), unix.ENOENT)
}

func (k *kernel) dropped() (uint64, error) {
	c, err := k.nft()
	if err != nil {
		return 0, err
	}
	o, err := c.GetObject(&nftables.CounterObj{Table: k.nftTable(), Name: nftCounter})
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read counter inet %s %s: %w", k.o.nftTableName(), nftCounter, err)
	}
	if co, ok := o.(*nftables.CounterObj); ok {
		return co.Packets, nil
	}
	return 0, nil
}
