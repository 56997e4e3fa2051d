namespace Dtrain.Collective;

/// <summary>One direction of bytes to one peer (a shared-memory ring buffer or a TCP connection).</summary>
internal interface IOutboundLink : IAsyncDisposable
{
    /// <summary>"shared memory", "tcp", "tcp+tls".</summary>
    string Kind { get; }

    /// <summary>Writes the frame; the piece's memory is not read after this completes.</summary>
    ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken);

    /// <summary>Cancelled when the link broke (the peer closed, died or the connection failed).</summary>
    CancellationToken Broken { get; }

    /// <summary>Why the link broke, or null.</summary>
    Exception? Fault { get; }
}
