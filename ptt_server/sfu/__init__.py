"""The media side of the server: ICE settings, the uplink tap, fan-out, downlink tracks."""
