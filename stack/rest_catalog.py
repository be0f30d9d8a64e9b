"""An Iceberg REST catalog server: Apache Iceberg's reference implementation, from Maven Central jars.

The server is Iceberg's own ``RESTCatalogServlet`` over ``RESTCatalogAdapter`` (the classes Iceberg's
``RESTCatalogServer`` test fixture serves) in front of a ``JdbcCatalog`` on a SQLite file, with
``HadoopFileIO`` writing metadata to a local warehouse folder. It is started through a small launcher,
``stack/java/RestCatalogServer.java``, run as a single source file (nothing is built), because Iceberg's
own main class binds every interface and accepts any token: the launcher binds 127.0.0.1 and, with a
``token``, refuses every request without it (HTTP 401) and answers the OAuth2 client-credentials
exchange only for ``credential`` (``client_id:client_secret``).

The classpath is the runtime closure of ``stack/poms/rest-catalog.xml``, copied by Maven into
``<cache>/iceberg-rest-<version>/libs`` (see :func:`stack.maven.cache_dir`). Layout under ``state_dir``
(``<base>/rest``)::

    warehouse/          the default warehouse folder
    catalog.db          the SQLite catalog database
    rest.env            the launcher's settings (rewritten at every start; no secret)
    rest.log            the server's output
    pid, lock

Port: ``$ICEFIELD_REST_PORT`` (18181), 127.0.0.1 only. Ready when ``GET /v1/config`` answers 200
(with the token when there is one).
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from .base import ServiceNotInstalled, StackError
from .jvm import JavaService, find_java, read_port_env
from .maven import POMS_DIR, cache_dir, copy_dependencies

logger = logging.getLogger(__name__)

ICEBERG_VERSION = "1.11.0"
REST_PORT_ENV = "ICEFIELD_REST_PORT"
REST_PORT_DEFAULT = 18181
REST_POM = POMS_DIR / "rest-catalog.xml"
LAUNCHER = Path(__file__).resolve().parent / "java" / "RestCatalogServer.java"
JDK_INSTALL_HINT = "apt-get install openjdk-17-jdk-headless"


def rest_libs(version: str = ICEBERG_VERSION) -> Path:
    """Return the folder of the REST catalog server's jars, assembling it with Maven first if needed.

    Raises :class:`~stack.base.ServiceNotInstalled` if Maven is missing, :class:`StackError` if it fails.
    """
    return copy_dependencies(
        REST_POM,
        cache_dir() / f"iceberg-rest-{version}" / "libs",
        {"iceberg.version": version},
        purpose=f"the Iceberg {version} REST catalog server jars",
    )


class RestCatalog(JavaService):
    """Iceberg's reference REST catalog server under ``state_dir``, on 127.0.0.1 only.

    ``port`` comes from the argument, else ``$ICEFIELD_REST_PORT``, else 18181. ``warehouse`` is the
    folder the server writes table metadata under (default ``state_dir/warehouse``); clients write
    their data files under the location the server gives each table. With ``token`` every request
    must carry ``Authorization: Bearer <token>``; ``credential`` (``client_id:client_secret``, needs
    ``token``) is exchanged for that token at ``/v1/oauth/tokens``.
    """

    name = "rest"
    main_class = "RestCatalogServer"
    heap = "256m"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        port: int | None = None,
        fast: bool = False,
        warehouse: Path | None = None,
        token: str | None = None,
        credential: str | None = None,
        version: str = ICEBERG_VERSION,
    ) -> None:
        """Configure the launcher; touches nothing on disk. Raises :class:`StackError` for a bad port or
        a credential without a token."""
        super().__init__(base_dir, fast=fast)
        self._port = port if port is not None else read_port_env(REST_PORT_ENV, REST_PORT_DEFAULT)
        if not 1 <= self._port <= 65535:
            raise StackError(f"REST catalog port {self._port} is out of range 1-65535")
        if credential is not None and not token:
            raise StackError("the REST catalog's credential is exchanged for its token: give a token too")
        self._warehouse = warehouse
        self.token = token
        self.credential = credential
        self.version = version

    @property
    def port(self) -> int:
        return self._port

    def url(self) -> str:
        """The catalog's base URL, ``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def warehouse(self) -> Path:
        """The folder the server writes table metadata under."""
        return (self._warehouse or self.state_dir / "warehouse").absolute()

    @property
    def database(self) -> Path:
        """The SQLite file of the server's JdbcCatalog."""
        return self.state_dir / "catalog.db"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "rest.env"

    def install(self) -> None:
        """Find Java 17+ with its compiler (the launcher is a source file, compiled in memory at every start:
        a JRE alone cannot run it) and assemble the jars (Maven, cached); raise ServiceNotInstalled naming
        the fix."""
        java = find_java()
        if not Path(os.path.realpath(java)).with_name("javac").is_file():
            raise ServiceNotInstalled(
                f"{java} is a Java runtime without the compiler the REST catalog's launcher needs: run "
                f"`{JDK_INSTALL_HINT}` or point JAVA_HOME at a JDK"
            )
        self._java = java
        self._libs = rest_libs(self.version)

    def prepare(self) -> None:
        self.warehouse.mkdir(parents=True, exist_ok=True)
        settings = self._settings()
        self.config_file.write_text(
            "# Written by stack/rest_catalog.py at every start: change the launcher, not this file.\n"
            + "".join(f"{k}={v}\n" for k, v in settings.items() if k in ("ICEFIELD_REST_PORT", "ICEFIELD_REST_WAREHOUSE", "ICEFIELD_REST_DB"))
        )

    def _settings(self) -> dict[str, str]:
        settings = {
            "ICEFIELD_REST_PORT": str(self.port),
            "ICEFIELD_REST_WAREHOUSE": str(self.warehouse),
            "ICEFIELD_REST_DB": str(self.database.absolute()),
        }
        if self.token:
            settings["ICEFIELD_REST_TOKEN"] = self.token
        if self.credential:
            settings["ICEFIELD_REST_CREDENTIAL"] = self.credential
        return settings

    def command(self) -> list[str]:
        """``java -cp <libs>/* RestCatalogServer.java`` (a single source file: compiled in memory at start)."""
        assert self._java is not None and self._libs is not None, "install() first"
        options = [o for o in self.jvm_options() if not o.startswith("-Dlog4j2")]  # slf4j-simple logs
        return [self._java, *options, "-cp", f"{self._libs}/*", str(LAUNCHER)]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in super().environment().items() if not k.startswith("ICEFIELD_REST_")}
        env.update(self._settings())
        return env

    def probe(self) -> bool:
        """True when ``GET /v1/config`` answers 200."""
        request = urllib.request.Request(f"{self.url()}/v1/config")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False


__all__ = ["ICEBERG_VERSION", "REST_PORT_DEFAULT", "REST_PORT_ENV", "RestCatalog", "rest_libs"]
