"""A real RTSP server for the tests: gst-rtsp-server serving a live H.264 test pattern at
rtsp://127.0.0.1:PORT/test; given a PEM file (certificate and key), over TLS as
rtsps://127.0.0.1:PORT/test. Run with Debian's /usr/bin/python3 (python3-gi). Prints "ready"."""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=160,height=120,framerate=25/1 "
                   "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! rtph264pay name=pay0 pt=96 )")
factory.set_shared(True)
if len(sys.argv) > 2:
    # TLS on the RTSP connection (the media then flows interleaved in it). An auth object is
    # what carries the certificate; it lets every client in, as the plain server does.
    auth = GstRtspServer.RTSPAuth()
    auth.set_tls_certificate(Gio.TlsCertificate.new_from_file(sys.argv[2]))
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "anyone")
    auth.set_default_token(token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("anyone", "media.factory.access", True)
    permissions.add_permission_for_role("anyone", "media.factory.construct", True)
    factory.set_permissions(permissions)
server.get_mount_points().add_factory("/test", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
