using Xunit.Abstractions;

namespace Dtrain.E2E.Support;

/// <summary>
/// The preamble the container-cluster tests share: the image built, a temporary directory for specs and downloads,
/// a running cluster, and the host CLI using that cluster's client certificate.
/// </summary>
public sealed class ClusterScene : IAsyncDisposable
{
    private ClusterScene(TempDir tmp, HostCli cli, ContainerCluster cluster) => (Tmp, Cli, Cluster) = (tmp, cli, cluster);

    public TempDir Tmp { get; }
    public HostCli Cli { get; }
    public ContainerCluster Cluster { get; }

    public static async Task<ClusterScene> StartAsync(ImageFixture image, ITestOutputHelper output, string purpose, int workers, IReadOnlyDictionary<string, string>? coordinatorEnv = null)
    {
        image.EnsureBuilt(output);
        var tmp = new TempDir();
        try
        {
            var cluster = await ContainerCluster.StartAsync(output, purpose, workers, coordinatorEnv);
            return new ClusterScene(tmp, new HostCli(output, tmp.Path) { TlsDir = cluster.ClientTlsDir }, cluster);
        }
        catch
        {
            tmp.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Cluster.DisposeAsync();
        Tmp.Dispose();
    }
}
