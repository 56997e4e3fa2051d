using System.Collections.Concurrent;
using Dtrain.Protos.Worker;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Dtrain.Tests.Support;

/// <summary>
/// What reached a worker over the wire (install <see cref="ShardTapInterceptor"/> in its gRPC server): token values in
/// shard chunks (inputs, targets, lengths and validation tokens), planned steps (rows the worker reads itself), how often
/// it was told to read a dataset's validation split, and the dataset each assignment named ("" for none).
/// </summary>
public sealed class ShardTap
{
    long values, planned, validation, validationValues;
    public long Values => Interlocked.Read(ref values);
    /// <summary>Of <see cref="Values"/>, the validation split's: its tokens (language model) or its examples' tokens (classification).</summary>
    public long ValidationValues => Interlocked.Read(ref validationValues);
    public long PlannedSteps => Interlocked.Read(ref planned);
    public long DatasetValidation => Interlocked.Read(ref validation);
    public ConcurrentBag<string> Datasets { get; } = [];

    public void Add(ShardChunk c)
    {
        Interlocked.Add(ref values, c.ValidationTokens.Count + c.ValidationExamples.Sum(e => e.Tokens.Count)
            + c.Steps.Sum(s => (long)s.Inputs.Count + s.Targets.Count + s.Lengths.Count));
        Interlocked.Add(ref validationValues, c.ValidationTokens.Count + c.ValidationExamples.Sum(e => e.Tokens.Count));
        Interlocked.Add(ref planned, c.Steps.Count(s => s.Planned));
        if (c.DatasetValidation) Interlocked.Increment(ref validation);
    }

    public void Reset()
    {
        Interlocked.Exchange(ref values, 0);
        Interlocked.Exchange(ref planned, 0);
        Interlocked.Exchange(ref validation, 0);
        Interlocked.Exchange(ref validationValues, 0);
        Datasets.Clear();
    }
}

/// <summary>A worker's server interceptor that records every shard chunk and assignment it receives in a <see cref="ShardTap"/>.</summary>
public sealed class ShardTapInterceptor(ShardTap tap) : Interceptor
{
    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        if (request is AssignRequest a) tap.Datasets.Add(a.Dataset?.Uri ?? "");
        return continuation(request, context);
    }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation) =>
        continuation(new Tapped<TRequest>(requestStream, tap), context);

    sealed class Tapped<T>(IAsyncStreamReader<T> inner, ShardTap tap) : IAsyncStreamReader<T>
    {
        public T Current => inner.Current;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            var more = await inner.MoveNext(cancellationToken);
            if (more && inner.Current is ShardChunk c) tap.Add(c);
            return more;
        }
    }
}
