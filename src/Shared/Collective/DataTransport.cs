namespace Dtrain.Collective;

/// <summary>How tensor bytes travel between two workers.</summary>
public enum DataTransport
{
    /// <summary>Shared memory when the peer is on the same host (its /dev/shm is ours), TCP otherwise.</summary>
    Auto,

    /// <summary>A memory-mapped ring buffer in /dev/shm per directed pair (same host only).</summary>
    Shm,

    /// <summary>A plain TCP connection per directed pair (TLS when the cluster has TLS).</summary>
    Tcp,

    /// <summary>The gRPC <c>Push</c> streams (the fallback).</summary>
    Grpc,
}

/// <summary>Names of the transports as options and logs spell them.</summary>
public static class DataTransports
{
    /// <summary>Parses auto|shm|tcp|grpc (case-insensitive).</summary>
    public static bool TryParse(string? value, out DataTransport transport)
    {
        switch ((value ?? "").Trim().ToLowerInvariant())
        {
            case "auto": transport = DataTransport.Auto; return true;
            case "shm": transport = DataTransport.Shm; return true;
            case "tcp": transport = DataTransport.Tcp; return true;
            case "grpc": transport = DataTransport.Grpc; return true;
            default: transport = DataTransport.Auto; return false;
        }
    }

    /// <summary>What the logs call a link of this kind: "shared memory", "tcp", "tcp+tls", "grpc".</summary>
    public static string Describe(DataTransport transport, bool tls = false) => transport switch
    {
        DataTransport.Shm => "shared memory",
        DataTransport.Tcp => tls ? "tcp+tls" : "tcp",
        DataTransport.Grpc => tls ? "grpc+tls" : "grpc",
        _ => "auto",
    };
}
