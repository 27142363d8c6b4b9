"""A real GCS emulator (gcp-storage-emulator) for gs:// tests, started by the test suite.

``start()`` runs the emulator's HTTP server in this process on a free port with an
in-memory store, creates the bucket, and points every client at it through
``STORAGE_EMULATOR_HOST`` (gcsfs, google-cloud-storage and Beam's GCS filesystem all
honour it). No Google credentials exist here; Beam's credential lookup would retry
four times with backoff (~20 s) before going anonymous, so its cache is primed with
"none" for the emulator's lifetime, which is what the lookup ends with anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(bucket: str = "korlm-test") -> Iterator[str]:
    """Yield ``gs://<bucket>`` served by a fresh emulator; restore the environment after."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    beam_auth = None
    try:
        from apache_beam.internal.gcp import auth as beam_auth

        saved = (beam_auth._Credentials._credentials_init, beam_auth._Credentials._credentials)
        beam_auth._Credentials._credentials_init, beam_auth._Credentials._credentials = True, None
    except ImportError:  # Beam without its GCP extra: nothing to prime
        pass
    try:
        yield f"gs://{bucket}"
    finally:
        if beam_auth is not None:
            beam_auth._Credentials._credentials_init, beam_auth._Credentials._credentials = saved
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        server.stop()
