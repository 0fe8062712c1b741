"""Free TCP ports for tests that start a two-worker TensorFlow cluster on this machine."""

import socket


def free_ports(count):
    """`count` distinct free ports on 127.0.0.1.

    Every socket stays bound until all ports are chosen, so the kernel cannot hand the same
    port out twice (two one-at-a-time picks can collide and a worker then fails to start).
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
