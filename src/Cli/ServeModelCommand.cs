using System.CommandLine;
using Dtrain.Rpc;
using Dtrain.Serving;

namespace Dtrain.Cli;

/// <summary>`dtrain serve-model MODEL [--port P] [--grpc-port G]`: the model as an HTTP/JSON and gRPC service with dynamic batching (docs/serving.md).</summary>
public static class ServeModelCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "A classification or language-model checkpoint file (.dtck) or run directory." };
        var port = new Option<int>("--port", "-p") { Description = $"Port to listen on (0 = any free port).", DefaultValueFactory = _ => ServingOptions.DefaultPort };
        var grpcPort = new Option<int?>("--grpc-port") { Description = $"Port of the gRPC service (protos/dtrain/serving.proto: Predict, Generate, GenerateStream; HTTP/2, same TLS and token; 0 = any free port). Default: {ServingOptions.DefaultGrpcPort}, or any free port when --port is 0." };
        var listen = new Option<string>("--listen") { Description = "Interface to listen on. Beyond loopback (e.g. 0.0.0.0) only with TLS (--tls-dir or --cert/--key) and --token-file, or --insecure.", DefaultValueFactory = _ => "127.0.0.1" };
        var maxBatch = new Option<int>("--max-batch") { Description = "Most texts classified in one forward pass (requests waiting together are grouped up to it), and most generations stepped together, one token each per pass (1 = no batching).", DefaultValueFactory = _ => 32 };
        var maxWait = new Option<int>("--max-wait-ms") { Description = "How long the first classification request of a batch may wait, counted from its arrival, for others to join it, in ms (0 = take only those already waiting; generations join at the next step without waiting).", DefaultValueFactory = _ => 5 };
        var queue = new Option<int>("--queue") { Description = "Requests that may wait for the inference thread; beyond it a request is answered 503 with Retry-After.", DefaultValueFactory = _ => 1024 };
        var threads = new Option<string>("--threads") { Description = $"Torch intra-op threads of the one inference thread: a number for every forward pass, or auto = chosen per pass from its size: 1 for a pass under {PassThreads.ParallelWork / 1_000_000} million multiply-adds (a small model, or few texts), all the CPUs this process may use for a larger one.", DefaultValueFactory = _ => "auto" };
        var maxLength = new Option<int>("--max-length") { Description = "Most tokens one generation (/v1/generate, gRPC Generate/GenerateStream) may ask for.", DefaultValueFactory = _ => 2000 };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var cmd = new Command("serve-model",
            "Serve a trained model over HTTP/JSON: POST /v1/predict (classifier: top-k labels with probabilities) or /v1/generate (language model; " +
            "\"stream\": true for NDJSON), dynamic batching, /health/live, /health/ready, Prometheus /metrics, OpenAPI at /openapi.json; " +
            "and over gRPC on --grpc-port (dtrain.serving.v1.ModelServing: Predict, Generate, GenerateStream). " +
            "SIGTERM drains (queued requests are answered) and exits 0. Token (--token-file): clients send \"Authorization: Bearer TOKEN\". docs/serving.md.");
        cmd.Arguments.Add(model);
        foreach (var o in new Option[] { port, grpcPort, listen, maxBatch, maxWait, queue, threads, maxLength, device }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var tls = CliTls.CommandLine(r);
            var options = new ServingOptions
            {
                ModelPath = r.GetValue(model)!,
                Port = r.GetValue(port),
                GrpcPort = r.GetValue(grpcPort),
                Listen = r.GetValue(listen)!,
                MaxBatch = r.GetValue(maxBatch),
                MaxWaitMs = r.GetValue(maxWait),
                QueueCapacity = r.GetValue(queue),
                Threads = ServingOptions.ParseThreads(r.GetValue(threads)!),
                MaxGenerateLength = r.GetValue(maxLength),
                Device = r.GetValue(device)!,
                Insecure = r.GetValue(Credentials.InsecureOption),
                Token = r.GetValue(Credentials.TokenFileOption) is { Length: > 0 } file ? Credentials.FromFile(file, "--token-file").Value : null,
                // The server's own certificate (tls.crt, tls.key of --tls-dir, or --cert/--key), as `dtrain serve` presents its own.
                Certificate = tls.HasMaterial ? tls.Load("serve-model TLS (--tls-dir, --cert, --key)", CertificateNeed.Required).Certificate : null,
            };
            if (!File.Exists(options.ModelPath) && !Directory.Exists(options.ModelPath)) throw new FileNotFoundException($"checkpoint not found: {options.ModelPath}");
            var server = ModelServer.StartAsync(options).GetAwaiter().GetResult();
            try
            {
                var loaded = server.Loaded.GetAwaiter().GetResult();
                var kind = loaded.Engine.Model is Models.RecurrentClassifier ? "classifier: POST /v1/predict" : "language model: POST /v1/generate";
                Console.WriteLine($"serving {loaded.Path} ({kind}) on {server.Address.ToString().TrimEnd('/')}");
                Console.WriteLine($"inference: {options.DescribeThreads()}");
                Console.WriteLine($"gRPC ({(loaded.Engine.Model is Models.RecurrentClassifier ? "Predict" : "Generate, GenerateStream")}) on {server.GrpcAddress.ToString().TrimEnd('/')}");
                Console.WriteLine(options.Certificate is null
                    ? (TlsSettings.IsLoopback(options.Listen) ? "plaintext on loopback" : "WARNING: plaintext beyond loopback (--insecure)") + (options.Token is null ? "; no token" : "; token required")
                    : $"TLS: certificate \"{options.Certificate.Subject}\"" + (options.Token is null ? "; no token" : "; token required"));
                server.WaitForShutdownAsync().GetAwaiter().GetResult();
                Console.WriteLine("drained: every request taken was answered");
            }
            finally
            {
                server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
            return CliErrors.Ok;
        }));
        return cmd;
    }
}
