"""Network guard for notebook runs: put this folder on PYTHONPATH and set LIGHTFT_NO_NETWORK=1.

Python imports `sitecustomize` at start-up, so every process of a test run (nbdev-test workers,
Jupyter kernels, nbconvert) refuses connections to anything but this machine. pytest uses
pytest-socket instead; this guard is for the processes pytest does not own.
"""
import os

if os.environ.get("LIGHTFT_NO_NETWORK") == "1":
    import ipaddress, socket

    _LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}

    def _is_local(host) -> bool:
        if host is None: return True
        if isinstance(host, bytes): host = host.decode()
        host = str(host).strip("[]")
        if host.lower() in _LOCAL_NAMES: return True
        try: return ipaddress.ip_address(host.split("%")[0]).is_loopback or host == "0.0.0.0"
        except ValueError: return False

    class NetworkAccessBlocked(ConnectionRefusedError):
        "Raised when a test tries to reach the network: the course runs offline."

    def _check(address):
        if isinstance(address, tuple) and address and not _is_local(address[0]):
            raise NetworkAccessBlocked(f"lightft tests run offline: blocked a connection to {address[0]!r}. "
                                       "Use a local file or a model shipped with the package instead.")

    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        _check(address); return _connect(self, address)
    def connect_ex(self, address):
        _check(address); return _connect_ex(self, address)
    def getaddrinfo(host, *args, **kwargs):
        _check((host,)); return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    socket.NetworkAccessBlocked = NetworkAccessBlocked
