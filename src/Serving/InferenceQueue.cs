using System.Threading.Channels;
using Dtrain.Data;
using Dtrain.Inference;
using Dtrain.Models;

namespace Dtrain.Serving;

/// <summary>A request waiting for the inference thread.</summary>
internal abstract class WorkItem
{
    /// <summary>The client went away: a generation stops at its next token.</summary>
    public CancellationToken Aborted { get; init; }

    /// <summary>When it was queued (<see cref="ServingOptions.Time"/>'s timestamp): its queue wait ends when the inference thread takes it into a pass.</summary>
    public long Queued { get; set; }
}

/// <summary>Texts to classify; they join other requests' texts in one forward pass.</summary>
internal sealed class PredictWork : WorkItem
{
    public required IReadOnlyList<string> Texts { get; init; }
    public TaskCompletionSource<IReadOnlyList<Prediction>> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>A generation: stepped together with the other generations running (one token each per forward pass), its text streamed piece by piece when <see cref="Pieces"/> is set.</summary>
internal sealed class GenerateWork : WorkItem
{
    public required string Prompt { get; init; }
    public required int Length { get; init; }
    public required double Temperature { get; init; }
    public required int TopK { get; init; }
    public required long Seed { get; init; }
    public Channel<string>? Pieces { get; init; }
    public TaskCompletionSource<string> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>
/// Dynamic batching as Triton does it: a bounded queue of requests and one inference thread that loads the model, then
/// takes the first waiting request and lets more classification requests join it — until --max-batch texts or
/// --max-wait-ms after it was queued — and classifies them all in one forward pass (<see cref="Predictor"/>, the code of
/// `dtrain predict`). Generations are batched by step (continuous batching): up to --max-batch run at once, each forward
/// pass draws the next token of every one (<see cref="TextGenerator.Step"/>, the code of `dtrain generate`), and a
/// generation that arrives joins at the next step after reading its prompt alone.
/// </summary>
internal sealed class InferenceQueue : IDisposable
{
    readonly ServingOptions options;
    readonly ServingMetrics metrics;
    readonly Channel<WorkItem> channel;
    readonly Thread thread;
    readonly TaskCompletionSource<TrainedModel> loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    // Wakes the inference thread from the thread that queued a request (or completed the queue). Waiting on the
    // channel's WaitToReadAsync instead woke it through a thread-pool work item, queued behind the clients' and
    // Kestrel's own: under load a request sat in the queue, and a batch's window ran long, until a pool thread came.
    readonly ManualResetEventSlim wake = new(false);
    int depth;
    // The torch threads the inference thread runs on now (0 = not set yet).
    int threads;

    public InferenceQueue(ServingOptions options, ServingMetrics metrics)
    {
        this.options = options;
        this.metrics = metrics;
        channel = Channel.CreateBounded<WorkItem>(new BoundedChannelOptions(options.QueueCapacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
        thread = new Thread(Run) { Name = "dtrain inference", IsBackground = true };
    }

    /// <summary>The model, once the inference thread has loaded it (faulted when it could not).</summary>
    public Task<TrainedModel> Loaded => loaded.Task;

    /// <summary>Requests waiting now.</summary>
    public int Depth => Volatile.Read(ref depth);

    public void Start() => thread.Start();

    /// <summary>Queues a request; false when the queue is full (or closed): answer 503.</summary>
    public bool TryEnqueue(WorkItem item)
    {
        Interlocked.Increment(ref depth);
        item.Queued = options.Time.GetTimestamp();
        if (channel.Writer.TryWrite(item))
        {
            wake.Set();
            metrics.QueueDepth.Set(Depth);
            return true;
        }
        Interlocked.Decrement(ref depth);
        return false;
    }

    /// <summary>Takes no more requests; the inference thread finishes those queued, then exits (<see cref="Dispose"/> waits for it).</summary>
    public void Complete()
    {
        channel.Writer.TryComplete();
        wake.Set();
    }

    public void Dispose()
    {
        Complete();
        if (thread.IsAlive) thread.Join();
    }

    void Run()
    {
        TrainedModel model;
        try
        {
            UseThreads(BaseThreads);
            model = TrainedModel.Load(options.ModelPath, options.Device, Console.Error.WriteLine);
            if (model.Engine.Model is not (RecurrentClassifier or RecurrentLanguageModel))
                throw new ArgumentException($"{model.Path} holds a {model.Spec.Task} model: serve-model serves classifiers and language models");
        }
        catch (Exception e)
        {
            loaded.TrySetException(e);
            Complete();
            while (channel.Reader.TryRead(out var item)) Fail(item, e);
            return;
        }
        loaded.TrySetResult(model);
        using (model)
        {
            var reader = channel.Reader;
            while (true)
            {
                wake.Reset();
                if (!reader.TryRead(out var first))
                {
                    if (reader.Completion.IsCompleted) return;
                    wake.Wait();
                    continue;
                }
                Taken();
                if (first is GenerateWork generate) RunGenerations(model, generate, reader);
                else
                {
                    var batch = new List<PredictWork> { (PredictWork)first };
                    Gather(reader, batch);
                    RunPredict(model, batch);
                }
                // Back to the base count between passes: the last count set is also the default of threads that
                // start running torch later (an app or test hosting the server in its own process).
                UseThreads(BaseThreads);
            }
        }
    }

    /// <summary>
    /// Runs the passes that follow on <paramref name="n"/> torch threads. libtorch keeps the count per thread once a
    /// thread has run torch (OpenMP's), so this sets the inference thread's own; it also becomes the default of threads
    /// that run torch for the first time later (none in serve-model: only this thread runs torch). ~0.1 µs a call.
    /// </summary>
    void UseThreads(int n)
    {
        if (n != threads) TorchSharp.torch.set_num_threads(n);
        threads = n;
    }

    /// <summary>The torch threads between passes: --threads N, or 1 for auto.</summary>
    int BaseThreads => options.Threads ?? 1;

    /// <summary>The threads of a pass over <paramref name="tokens"/> tokens: --threads N, or auto (<see cref="PassThreads"/>).</summary>
    int Choose(TrainedModel model, long tokens) => options.Threads ?? PassThreads.For(model.Spec.Model, tokens, options.Cores, options.ParallelWork);

    /// <summary>Sets the threads of a pass over <paramref name="tokens"/> tokens and counts it.</summary>
    void ThreadsFor(TrainedModel model, long tokens)
    {
        var n = Choose(model, tokens);
        UseThreads(n);
        metrics.PassesByThreads.WithLabels(n.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
    }

    void Taken()
    {
        Interlocked.Decrement(ref depth);
        metrics.QueueDepth.Set(Depth);
    }

    /// <summary>
    /// Lets classification requests join <paramref name="batch"/> until it holds --max-batch texts or --max-wait-ms have
    /// passed since its first was queued (as Triton's max_queue_delay): a request that already waited that long behind a
    /// forward pass goes at once with whatever is queued, rather than waiting a whole window more.
    /// </summary>
    void Gather(ChannelReader<WorkItem> reader, List<PredictWork> batch)
    {
        var texts = batch[0].Texts.Count;
        var started = batch[0].Queued;
        var window = TimeSpan.FromMilliseconds(options.MaxWaitMs);
        while (texts < options.MaxBatch)
        {
            wake.Reset();
            if (reader.TryPeek(out var next))
            {
                if (next is not PredictWork p || texts + p.Texts.Count > options.MaxBatch) return;
                reader.TryRead(out _);
                Taken();
                batch.Add(p);
                texts += p.Texts.Count;
                continue;
            }
            if (reader.Completion.IsCompleted) return;
            if (options.Time.GetElapsedTime(started) >= window) return;
            Wait(started, window);
        }
    }

    /// <summary>
    /// Sleeps until a request is queued (or the queue completed) or <paramref name="window"/> has passed since
    /// <paramref name="started"/> on <see cref="ServingOptions.Time"/>.
    /// </summary>
    void Wait(long started, TimeSpan window)
    {
        if (options.Time == TimeProvider.System)
        {
            // Whole milliseconds, rounded up: a wait of 0 would return at once and spin out the window's last fraction.
            wake.Wait((int)Math.Max(0, Math.Ceiling((window - options.Time.GetElapsedTime(started)).TotalMilliseconds)));
            return;
        }
        // Another clock (a test's fake one) counts a timer's due time from the timer's making: when the clock moved
        // between reading the time left and making the timer, that timer would end past the window (and a fake clock
        // that never moves again would never end it). Made again until the clock stood still meanwhile.
        while (true)
        {
            var now = options.Time.GetTimestamp();
            var left = window - options.Time.GetElapsedTime(started, now);
            if (left <= TimeSpan.Zero) return;
            using var timer = options.Time.CreateTimer(_ => wake.Set(), null, left, Timeout.InfiniteTimeSpan);
            if (options.Time.GetTimestamp() != now) continue;
            wake.Wait();
            return;
        }
    }

    void RunPredict(TrainedModel model, List<PredictWork> batch)
    {
        var texts = batch.SelectMany(w => w.Texts).ToList();
        metrics.BatchSize.Observe(texts.Count);
        var started = options.Time.GetTimestamp();
        foreach (var w in batch) metrics.QueueWait.Observe(options.Time.GetElapsedTime(w.Queued, started).TotalSeconds);
        IReadOnlyList<Prediction> predictions;
        try
        {
            var sequences = Predictor.Encode(model, texts);
            // A request of more texts than --max-batch is classified in passes of --max-batch: the first is the largest.
            ThreadsFor(model, sequences.Take(options.MaxBatch).Sum(s => (long)s.Length));
            predictions = Predictor.Predict(model, sequences, options.MaxBatch);
            metrics.Pass.Observe(options.Time.GetElapsedTime(started).TotalSeconds);
        }
        catch (Exception e)
        {
            foreach (var w in batch) w.Done.TrySetException(e);
            return;
        }
        var at = 0;
        foreach (var w in batch)
        {
            w.Done.TrySetResult(predictions.Skip(at).Take(w.Texts.Count).ToList());
            at += w.Texts.Count;
        }
    }

    /// <summary>A generation running: its work, its sequence and how its tokens read as text.</summary>
    sealed record Running(GenerateWork Work, TextGenerator.Sequence Sequence, Func<int, string> Pieces);

    /// <summary>
    /// Runs <paramref name="first"/> and every generation that arrives while any runs, up to --max-batch at once: each
    /// forward pass draws one token for all of them. A generation whose client went away stops at its next token.
    /// </summary>
    void RunGenerations(TrainedModel model, GenerateWork first, ChannelReader<WorkItem> reader)
    {
        var running = new List<Running>();
        Join(model, first, running);
        try
        {
            while (true)
            {
                while (running.Count < options.MaxBatch && reader.TryPeek(out var next) && next is GenerateWork)
                {
                    reader.TryRead(out _);
                    Taken();
                    Join(model, (GenerateWork)next, running);
                }
                if (running.Count == 0) return;
                metrics.BatchSize.Observe(running.Count);
                var started = options.Time.GetTimestamp();
                ThreadsFor(model, running.Count);
                TextGenerator.Step(model, [.. running.Select(r => r.Sequence)]);
                metrics.Pass.Observe(options.Time.GetElapsedTime(started).TotalSeconds);
                for (var i = running.Count - 1; i >= 0; i--)
                    if (!Drawn(running[i])) running.RemoveAt(i);
            }
        }
        catch (Exception e)
        {
            foreach (var r in running) Stop(r, e);
        }
    }

    /// <summary>Reads the prompt and draws the first token; a generation refused or done at once is answered here.</summary>
    void Join(TrainedModel model, GenerateWork work, List<Running> running)
    {
        metrics.QueueWait.Observe(options.Time.GetElapsedTime(work.Queued).TotalSeconds);
        TextGenerator.Sequence sequence;
        try
        {
            work.Aborted.ThrowIfCancellationRequested();
            // The prompt is read in one pass of its tokens (at most one per character).
            UseThreads(Choose(model, Math.Max(1, work.Prompt.Length)));
            sequence = TextGenerator.Begin(model, work.Prompt, work.Length, work.Temperature, work.TopK, work.Seed);
        }
        catch (Exception e)
        {
            work.Done.TrySetException(e);
            work.Pieces?.Writer.TryComplete();
            return;
        }
        var r = new Running(work, sequence, Pieces(model.Tokenizer, work.Prompt));
        if (Drawn(r)) running.Add(r);
    }

    /// <summary>Passes on the token just drawn; false when the generation is over (done, or its client went away).</summary>
    static bool Drawn(Running r)
    {
        if (r.Work.Aborted.IsCancellationRequested)
        {
            Stop(r, new OperationCanceledException(r.Work.Aborted));
            return false;
        }
        r.Work.Pieces?.Writer.TryWrite(r.Pieces(r.Sequence.Last));
        if (!r.Sequence.Done) return true;
        r.Work.Done.TrySetResult(r.Sequence.Text());
        r.Work.Pieces?.Writer.TryComplete();
        r.Sequence.Dispose();
        return false;
    }

    static void Stop(Running r, Exception e)
    {
        r.Work.Done.TrySetException(e);
        r.Work.Pieces?.Writer.TryComplete();
        r.Sequence.Dispose();
    }

    /// <summary>
    /// Each token's text as it is drawn, such that the pieces joined are the text <see cref="TextGenerator.Generate"/>
    /// returns: words are separated by a space (and the first from a prompt that does not end in one).
    /// </summary>
    internal static Func<int, string> Pieces(ITokenizer tokenizer, string prompt)
    {
        if (tokenizer is not WordTokenizer) return id => tokenizer.Decode([id]);
        var first = true;
        return id =>
        {
            var word = tokenizer.Decode([id]);
            var spaced = first ? prompt.Length > 0 && !char.IsWhiteSpace(prompt[^1]) : true;
            first = false;
            return spaced ? " " + word : word;
        };
    }

    static void Fail(WorkItem item, Exception e)
    {
        switch (item)
        {
            case PredictWork p: p.Done.TrySetException(e); break;
            case GenerateWork g:
                g.Done.TrySetException(e);
                g.Pieces?.Writer.TryComplete();
                break;
        }
    }
}
