"""The data path: uplink tap, router, downlink tracks, egress, ICE and SDP."""
