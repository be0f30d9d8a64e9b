// The Hive Metastore icefield's tests and `make stack-up SERVICES=hive` run: Apache Hive's standalone
// metastore 3.1 (HMSHandler behind RetryingHMSHandler, from hive-standalone-metastore), served over
// Thrift on 127.0.0.1 only. Hive 3.1's HiveMetaStore main binds every interface (its
// metastore.thrift.bind.host setting came with Hive 4); this launcher serves the same handler, processor
// and transport as that main's plain (no SASL, no SSL) path, on the loopback address.
// Run as a single source file (`java -cp <conf>:<libs>/* HiveMetastoreServer.java <port>`): nothing is
// built. The configuration (metastore-site.xml) comes from the classpath's first folder.

import java.net.InetAddress;
import java.net.InetSocketAddress;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hive.metastore.HiveMetaStore;
import org.apache.hadoop.hive.metastore.IHMSHandler;
import org.apache.hadoop.hive.metastore.RetryingHMSHandler;
import org.apache.hadoop.hive.metastore.TUGIBasedProcessor;
import org.apache.hadoop.hive.metastore.conf.MetastoreConf;
import org.apache.hadoop.hive.metastore.security.TUGIContainingTransport;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.server.TServer;
import org.apache.thrift.server.TThreadPoolServer;
import org.apache.thrift.transport.TServerSocket;

public class HiveMetastoreServer {
  public static void main(String[] args) throws Exception {
    int port = Integer.parseInt(args[0]);
    Configuration conf = MetastoreConf.newMetastoreConf();
    IHMSHandler handler = RetryingHMSHandler.getProxy(conf, new HiveMetaStore.HMSHandler("new db based metaserver", conf, false), false);
    TServerSocket socket = new TServerSocket(new InetSocketAddress(InetAddress.getLoopbackAddress(), port));
    TThreadPoolServer.Args serverArgs = new TThreadPoolServer.Args(socket)
        .processor(new TUGIBasedProcessor<>(handler))
        .transportFactory(new TUGIContainingTransport.Factory())
        .protocolFactory(new TBinaryProtocol.Factory())
        .minWorkerThreads(4)
        .maxWorkerThreads(64);
    TServer server = new TThreadPoolServer(serverArgs);
    System.out.println("HiveMetastoreServer: serving thrift://127.0.0.1:" + port);
    server.serve();
  }
}
