// The Iceberg REST catalog server icefield's tests and `make stack-up SERVICES=rest` run: Apache
// Iceberg's own reference implementation (RESTCatalogServlet over RESTCatalogAdapter, from the
// iceberg-core test jar) in front of a JdbcCatalog on SQLite, served by Jetty on 127.0.0.1 only.
// Iceberg's RESTCatalogServer binds every interface and accepts any token; this launcher binds the
// loopback address and, when ICEFIELD_REST_TOKEN is set, refuses every request without that bearer
// token (401), and answers the OAuth2 client-credentials exchange only for ICEFIELD_REST_CREDENTIAL.
// Run as a single source file (`java -cp <libs>/* RestCatalogServer.java`): nothing is built.
//
// Environment: ICEFIELD_REST_PORT, ICEFIELD_REST_WAREHOUSE (a local folder), ICEFIELD_REST_DB (the
// SQLite file), optional ICEFIELD_REST_TOKEN and ICEFIELD_REST_CREDENTIAL ("client_id:client_secret").

import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.http.HttpHeader;
import org.eclipse.jetty.io.Content;
import org.eclipse.jetty.server.Handler;
import org.eclipse.jetty.server.Request;
import org.eclipse.jetty.server.Response;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.util.Callback;

public class RestCatalogServer {
  static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  static final class Auth extends Handler.Wrapper {
    private final String token;
    private final String credential;

    Auth(Handler inner, String token, String credential) {
      super(inner);
      this.token = token;
      this.credential = credential;
    }

    @Override
    public boolean handle(Request request, Response response, Callback callback) throws Exception {
      String path = Request.getPathInContext(request);
      if (path.endsWith("/oauth/tokens")) {
        Map<String, String> form = new HashMap<>();
        for (String pair : Content.Source.asString(request).split("&")) {
          int eq = pair.indexOf('=');
          if (eq > 0) {
            form.put(URLDecoder.decode(pair.substring(0, eq), StandardCharsets.UTF_8),
                URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8));
          }
        }
        String given = form.getOrDefault("client_id", "") + ":" + form.getOrDefault("client_secret", "");
        if (credential == null || !credential.equals(given)) {
          return answer(response, callback, 401, "{\"error\":\"invalid_client\",\"error_description\":\"unknown client credentials\"}");
        }
        return answer(response, callback, 200, "{\"access_token\":\"" + token + "\",\"token_type\":\"bearer\","
            + "\"issued_token_type\":\"urn:ietf:params:oauth:token-type:access_token\",\"expires_in\":3600}");
      }
      String header = request.getHeaders().get(HttpHeader.AUTHORIZATION);
      if (!("Bearer " + token).equals(header)) {
        return answer(response, callback, 401, "{\"error\":{\"message\":\"Not authorized: missing or unknown bearer token\","
            + "\"type\":\"NotAuthorizedException\",\"code\":401}}");
      }
      return super.handle(request, response, callback);
    }

    static boolean answer(Response response, Callback callback, int status, String body) {
      response.setStatus(status);
      response.getHeaders().put(HttpHeader.CONTENT_TYPE, "application/json");
      Content.Sink.write(response, true, body, callback);
      return true;
    }
  }

  public static void main(String[] args) throws Exception {
    int port = Integer.parseInt(env("ICEFIELD_REST_PORT", "18181"));
    Map<String, String> props = new HashMap<>();
    props.put("warehouse", env("ICEFIELD_REST_WAREHOUSE", "warehouse"));
    props.put("uri", "jdbc:sqlite:" + env("ICEFIELD_REST_DB", "catalog.db"));
    props.put("catalog-impl", "org.apache.iceberg.jdbc.JdbcCatalog");
    props.put("jdbc.schema-version", "V1");
    props.put("io-impl", "org.apache.iceberg.hadoop.HadoopFileIO");
    Catalog catalog = CatalogUtil.buildIcebergCatalog(
        "rest_backend", props, new org.apache.hadoop.conf.Configuration());

    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addServlet(new ServletHolder(new RESTCatalogServlet(new RESTCatalogAdapter(catalog))), "/*");
    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost("127.0.0.1");
    connector.setPort(port);
    server.addConnector(connector);
    String token = System.getenv("ICEFIELD_REST_TOKEN");
    String credential = System.getenv("ICEFIELD_REST_CREDENTIAL");
    server.setHandler(token == null || token.isEmpty() ? context : new Auth(context, token, credential));
    server.start();
    server.join();
  }
}
