namespace Dtrain.Data.Storage;

/// <summary>
/// How often a transient failure (a server unreachable, a 5xx, throttling, a connection cut mid-transfer) is tried
/// again: up to <see cref="MaxAttempts"/> attempts in all, waiting <see cref="BaseDelay"/>, then twice that, ... up to
/// <see cref="MaxDelay"/> between them (on <see cref="Time"/>). The number of attempts bounds it, never the clock alone.
/// </summary>
public sealed record StoreRetryPolicy
{
    public int MaxAttempts { get; init; } = 5;
    public TimeSpan BaseDelay { get; init; } = TimeSpan.FromMilliseconds(200);
    public TimeSpan MaxDelay { get; init; } = TimeSpan.FromSeconds(5);
    public TimeProvider Time { get; init; } = TimeProvider.System;
    /// <summary>Told of each transient failure that will be tried again: the URI, the attempt that failed, the wait, the cause (for logs and tests).</summary>
    public Action<string, int, TimeSpan, string>? OnRetry { get; init; }

    /// <summary>The wait before attempt <paramref name="attempt"/> + 1 (attempts count from 1).</summary>
    public TimeSpan DelayAfter(int attempt)
    {
        var factor = Math.Pow(2, Math.Min(attempt - 1, 30));
        return TimeSpan.FromTicks((long)Math.Min(MaxDelay.Ticks, BaseDelay.Ticks * factor));
    }

    /// <summary>
    /// Runs <paramref name="operation"/> (given the attempt number) until it succeeds, fails with a non-transient
    /// error, or has failed <see cref="MaxAttempts"/> times. <paramref name="classify"/> turns an exception into its
    /// description and whether it is transient, or returns null for exceptions that pass through unchanged
    /// (cancellation by the caller). The final failure is a <see cref="DatasetStorageException"/> naming
    /// <paramref name="uri"/>, <paramref name="what"/> failed, the last cause and the attempts made.
    /// </summary>
    public async Task<T> RunAsync<T>(string uri, string what, Func<int, CancellationToken, Task<T>> operation,
        Func<Exception, CancellationToken, (string Problem, bool Transient)?> classify, CancellationToken cancellationToken)
    {
        if (MaxAttempts < 1) throw new InvalidOperationException($"StoreRetryPolicy.MaxAttempts is {MaxAttempts}; at least 1");
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await operation(attempt, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not DatasetStorageException && classify(e, cancellationToken) is { } failure)
            {
                if (!failure.Transient)
                    throw new DatasetStorageException(uri, $"{what}: {failure.Problem}", attempt, e);
                if (attempt >= MaxAttempts)
                    throw new DatasetStorageException(uri, $"{what} failed {attempt} times, giving up: {failure.Problem}", attempt, e);
                OnRetry?.Invoke(uri, attempt, DelayAfter(attempt), $"{what}: {failure.Problem}");
            }
            await Task.Delay(DelayAfter(attempt), Time, cancellationToken).ConfigureAwait(false);
        }
    }
}
