using System.Net;
using Dtrain.Rpc;
using Dtrain.Server;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;

namespace Dtrain.Tests.Cluster;

/// <summary>The second listener (HTTP/1.1) that serves browsers and Prometheus beside the gRPC port.</summary>
public class HttpListenerTests
{
    [Fact]
    public async Task A_server_with_an_http_port_serves_http1_endpoints_there_and_grpc_on_its_own_port()
    {
        var builder = GrpcServerHost.CreateBuilder("127.0.0.1", 0, 4 << 20, null, httpPort: 0);
        await using var app = builder.Build();
        GrpcServerHost.RequireHttpPort(app.MapGet("/hello", () => "hi"), app);
        GrpcServerHost.MapHealth(app, "ready");
        await app.StartAsync();

        var web = GrpcServerHost.HttpAddress(app);
        Assert.NotNull(web);
        var grpc = GrpcServerHost.LocalAddress(app);
        Assert.NotEqual(new Uri(web!).Port, new Uri(grpc).Port);

        using var http = new HttpClient();
        var reply = await http.GetAsync(web + "/hello");
        Assert.Equal(HttpStatusCode.OK, reply.StatusCode);
        Assert.Equal(new Version(1, 1), reply.Version);
        Assert.Equal("hi", await reply.Content.ReadAsStringAsync());

        // The page is not served on the gRPC port (HTTP/2 with prior knowledge reaches it, and gets 404)...
        using var h2 = new HttpRequestMessage(HttpMethod.Get, grpc + "/hello") { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        Assert.Equal(HttpStatusCode.NotFound, (await http.SendAsync(h2)).StatusCode);
        // ...and gRPC still answers on its port.
        using var channel = GrpcChannel.ForAddress(grpc);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving,
            (await new Health.HealthClient(channel).CheckAsync(new HealthCheckRequest { Service = "" })).Status);
        await app.StopAsync();
    }

    [Fact]
    public async Task Without_an_http_port_there_is_no_second_listener()
    {
        await using var app = GrpcServerHost.CreateBuilder("127.0.0.1", 0, 4 << 20, null).Build();
        await app.StartAsync();
        Assert.Null(GrpcServerHost.HttpAddress(app));
        await app.StopAsync();
    }

    [Theory]
    [InlineData(-2)]
    [InlineData(70000)]
    public void An_http_port_out_of_range_is_refused_naming_the_option(int port)
    {
        var errors = new CoordinatorOptions { HttpPort = port }.Validate();
        Assert.Contains(errors, e => e.Contains("Coordinator:HttpPort", StringComparison.Ordinal));
    }
}
