using System.Security.Cryptography.X509Certificates;

namespace Dtrain.Serving;

/// <summary>How `dtrain serve-model` serves a model (command-line options; docs/serving.md).</summary>
public sealed record ServingOptions
{
    public const int DefaultPort = 8600;
    public const int DefaultGrpcPort = 8601;

    /// <summary>A checkpoint file (.dtck) or run directory.</summary>
    public required string ModelPath { get; init; }
    /// <summary>The interface to listen on: loopback unless TLS and a token are given.</summary>
    public string Listen { get; init; } = "127.0.0.1";
    /// <summary>The port (0 = any free port).</summary>
    public int Port { get; init; } = DefaultPort;
    /// <summary>
    /// The gRPC port (0 = any free port): the same service over gRPC (protos/dtrain/serving.proto), HTTP/2 only. Unset:
    /// 8601, or any free port when <see cref="Port"/> is 0 (a server on a free port should not hold a fixed one).
    /// </summary>
    public int? GrpcPort { get; init; }

    /// <summary>The port gRPC binds (<see cref="GrpcPort"/> or its default).</summary>
    public int GrpcPortToBind => GrpcPort ?? (Port == 0 ? 0 : DefaultGrpcPort);
    /// <summary>The most texts one forward pass classifies (1 = no batching).</summary>
    public int MaxBatch { get; init; } = 32;
    /// <summary>How long the first request of a batch may wait, counted from its queueing, for more to join it, in milliseconds.</summary>
    public int MaxWaitMs { get; init; } = 5;
    /// <summary>Requests waiting for the inference thread at most; one more is answered 503 with Retry-After.</summary>
    public int QueueCapacity { get; init; } = 1024;
    /// <summary>
    /// Torch intra-op threads of the inference thread: a fixed number, or null (--threads auto) = chosen per forward pass
    /// from its size (<see cref="PassThreads"/>): 1 for small passes, <see cref="Cores"/> for large ones.
    /// </summary>
    public int? Threads { get; init; }
    /// <summary>The cores --threads auto gives a large pass (default: the CPUs this process may use, a container's CPU quota included).</summary>
    public int Cores { get; init; } = Environment.ProcessorCount;

    /// <summary>"--threads N" or "auto", as serve-model takes it: null for auto; anything else is an ArgumentException naming the value.</summary>
    public static int? ParseThreads(string value)
    {
        if (value.Equals("auto", StringComparison.OrdinalIgnoreCase)) return null;
        if (int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n is >= 1 and <= 256) return n;
        throw new ArgumentException($"--threads \"{value}\" is not auto or a number of torch threads from 1 to 256");
    }

    /// <summary>The multiply-adds from which --threads auto runs a pass on every core (<see cref="PassThreads.ParallelWork"/>; tests lower it).</summary>
    internal long ParallelWork { get; init; } = PassThreads.ParallelWork;

    /// <summary>How the inference thread's torch threads are set, as serve-model prints it.</summary>
    public string DescribeThreads() => Threads is { } n
        ? $"{n} torch thread{(n == 1 ? "" : "s")} for every forward pass"
        : $"torch threads auto: 1 for a forward pass under {ParallelWork / 1_000_000} million multiply-adds, {Cores} (the CPUs) for a larger one";
    /// <summary>The most texts one /v1/predict request may carry.</summary>
    public int MaxTexts { get; init; } = 1024;
    /// <summary>The most tokens one /v1/generate request may ask for.</summary>
    public int MaxGenerateLength { get; init; } = 2000;
    /// <summary>cpu, cuda or cuda:N.</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>The server's certificate (with its key): HTTPS when set.</summary>
    public X509Certificate2? Certificate { get; init; }
    /// <summary>The bearer token requests to /v1/* must carry ("Authorization: Bearer TOKEN"); none when null.</summary>
    public string? Token { get; init; }
    /// <summary>Listen beyond loopback without TLS or token, on purpose (--insecure).</summary>
    public bool Insecure { get; init; }
    /// <summary>Time for the batching window (tests may drive it).</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>Every option in range, and a bind beyond loopback only with TLS and a token (or --insecure): an ArgumentException naming the option.</summary>
    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port {Port} is out of range: 0 (any free port) to 65535");
        if (GrpcPort is < 0 or > 65535) throw new ArgumentException($"--grpc-port {GrpcPort} is out of range: 0 (any free port) to 65535");
        if (GrpcPortToBind == Port && Port != 0) throw new ArgumentException($"--grpc-port {GrpcPortToBind} is also --port: gRPC needs a port of its own");
        if (MaxBatch is < 1 or > 4096) throw new ArgumentException($"--max-batch {MaxBatch} is out of range: 1 to 4096 texts per forward pass");
        if (MaxWaitMs is < 0 or > 10_000) throw new ArgumentException($"--max-wait-ms {MaxWaitMs} is out of range: 0 to 10000");
        if (QueueCapacity is < 1 or > 1_000_000) throw new ArgumentException($"--queue {QueueCapacity} is out of range: 1 to 1000000 requests");
        if (Threads is < 1 or > 256) throw new ArgumentException($"--threads {Threads} is out of range: auto or 1 to 256");
        if (Cores is < 1 or > 4096) throw new ArgumentException($"cores {Cores} is out of range: 1 to 4096");
        if (MaxGenerateLength is < 1 or > Inference.TextGenerator.MaxTokens) throw new ArgumentException($"--max-length {MaxGenerateLength} is out of range: 1 to {Inference.TextGenerator.MaxTokens} tokens");
        if (!System.Net.IPAddress.TryParse(Listen, out _) && !string.Equals(Listen, "localhost", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"--listen \"{Listen}\" is not an IP address (e.g. 127.0.0.1, or 0.0.0.0 for every interface)");
        if (!Rpc.TlsSettings.IsLoopback(Listen) && !Insecure && (Certificate is null || Token is null))
            throw new ArgumentException($"--listen {Listen} is beyond loopback: anyone who reaches the port could use the model and read what is sent to it. " +
                                        "Give the cluster's TLS (--tls-dir DIR with tls.crt and tls.key, or --cert FILE --key FILE; `dtrain certs init`) AND --token-file FILE " +
                                        "(the bearer token clients must send), or --insecure to serve plaintext without a token on purpose");
    }
}
