package metrics

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/device"
)

// TestOffloads: the data path's offload state shows in /status and as
// wgmesh_datapath_offload (1 in use, 0 not) and
// wgmesh_datapath_offload_fallbacks_total, by kind; without the func (kernel
// backend) neither is exported.
func TestOffloads(t *testing.T) {
	var mu sync.Mutex
	when := time.Date(2026, 11, 30, 15, 0, 0, 0, time.UTC)
	state := []device.OffloadState{{Kind: device.OffloadTUNGSO, Active: true}, {Kind: device.OffloadUDPGSO, Active: true}}
	m := New(Options{Offloads: func() []device.OffloadState {
		mu.Lock()
		defer mu.Unlock()
		return append([]device.OffloadState(nil), state...)
	}})
	fams := scrape(t, m.Handler())
	if got := series(fams, "wgmesh_datapath_offload"); len(got) != 2 || got["tun_gso"] != 1 || got["udp_gso"] != 1 {
		t.Errorf("wgmesh_datapath_offload = %v, want both 1", got)
	}
	if got := series(fams, "wgmesh_datapath_offload_fallbacks_total"); len(got) != 2 || got["tun_gso"] != 0 {
		t.Errorf("wgmesh_datapath_offload_fallbacks_total = %v, want both 0", got)
	}

	mu.Lock()
	state[0] = device.OffloadState{Kind: device.OffloadTUNGSO, Reason: "the kernel refused a coalesced TUN write (write /dev/net/tun: invalid argument); writing packets one by one", Fallbacks: 1, Since: when}
	mu.Unlock()
	fams = scrape(t, m.Handler())
	if got := series(fams, "wgmesh_datapath_offload"); got["tun_gso"] != 0 || got["udp_gso"] != 1 {
		t.Errorf("after the fallback: wgmesh_datapath_offload = %v, want tun_gso 0, udp_gso 1", got)
	}
	if got := series(fams, "wgmesh_datapath_offload_fallbacks_total"); got["tun_gso"] != 1 {
		t.Errorf("after the fallback: fallbacks = %v, want tun_gso 1", got)
	}
	st, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"offloads":[{"kind":"tun_gso","active":false,"reason":"the kernel refused a coalesced TUN write`,
		`"fallbacks":1,"lastFallback":"2026-11-30T15:00:00Z"},{"kind":"udp_gso","active":true,"fallbacks":0}]`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/status lacks %s:\n%s", want, b)
		}
	}

	plain := New(Options{})
	fams = scrape(t, plain.Handler())
	if got := series(fams, "wgmesh_datapath_offload"); len(got) != 0 {
		t.Errorf("without Offloads: %v, want no series", got)
	}
	if st, _ := plain.Status(context.Background()); st.Offloads != nil {
		t.Errorf("without Offloads: /status has %v", st.Offloads)
	}
}

// TestNewOffloadStatus: the /status rendering keeps every field, in UTC,
// and leaves the kernel backend's nil alone.
func TestNewOffloadStatus(t *testing.T) {
	if got := NewOffloadStatus(nil); got != nil {
		t.Errorf("kernel backend: %v, want nil", got)
	}
	when := time.Date(2026, 11, 30, 16, 0, 0, 0, time.FixedZone("CET", 3600))
	got := NewOffloadStatus([]device.OffloadState{
		{Kind: device.OffloadTUNGSO, Reason: "r", Fallbacks: 2, Since: when},
		{Kind: device.OffloadUDPGSO, Active: true},
	})
	if len(got) != 2 || got[0].Kind != "tun_gso" || got[0].Active || got[0].Reason != "r" || got[0].Fallbacks != 2 ||
		got[0].LastFallback == nil || !got[0].LastFallback.Equal(when) || got[0].LastFallback.Location() != time.UTC ||
		got[1].Kind != "udp_gso" || !got[1].Active || got[1].LastFallback != nil {
		t.Errorf("converted %+v", got)
	}
}

// TestInflight: the data path's in-flight windows show as
// wgmesh_datapath_inflight_packets{direction,limit} and
// wgmesh_datapath_inflight_resets_total{direction}; without the func
// (kernel backend) or without a bound, neither is exported.
func TestInflight(t *testing.T) {
	m := New(Options{Inflight: func() []device.InflightState {
		return []device.InflightState{
			{Direction: "tx", Limit: 128, Held: 17, Resets: 3},
			{Direction: "rx", Limit: 128, Held: 0},
		}
	}})
	fams := scrape(t, m.Handler())
	if got := series(fams, "wgmesh_datapath_inflight_packets"); len(got) != 2 || got["tx128"] != 17 || got["rx128"] != 0 {
		t.Errorf("wgmesh_datapath_inflight_packets = %v, want tx 17, rx 0 (limit 128)", got)
	}
	if got := series(fams, "wgmesh_datapath_inflight_resets_total"); len(got) != 2 || got["tx"] != 3 || got["rx"] != 0 {
		t.Errorf("wgmesh_datapath_inflight_resets_total = %v, want tx 3, rx 0", got)
	}
	for _, o := range []Options{{}, {Inflight: func() []device.InflightState { return nil }}} {
		fams = scrape(t, New(o).Handler())
		if got := series(fams, "wgmesh_datapath_inflight_packets"); len(got) != 0 {
			t.Errorf("without a window: %v, want no series", got)
		}
	}
}
