//! Tests of the loader actor: the exact stream, prompt stops, failure reaching the supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::loader::{LoaderActor, LoaderArgs, LoaderMsg};
use crate::config::ChatTemplate;
use crate::data::tests::{byte_tok, small_dataset};
use crate::data::{example_at, Dataset, Example};

fn loader_args(
    ds: Arc<Dataset>,
    start_at: u64,
    capacity: usize,
) -> (LoaderArgs, crossbeam_channel::Receiver<Example>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity);
    let args = LoaderArgs {
        dataset_index: 2,
        dataset: ds,
        tokenizer: Arc::new(byte_tok()),
        template: ChatTemplate::Plain,
        seq_len: 24,
        seed: 11,
        start_at,
        position: Arc::new(std::sync::atomic::AtomicU64::new(start_at)),
        sender,
    };
    (args, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_delivers_the_exact_stream_and_stops_promptly() {
    let ds = Arc::new(small_dataset(9));
    let tok = byte_tok();
    let start_at = 5;
    let (args, rx) = loader_args(Arc::clone(&ds), start_at, 4);
    let (actor, handle) = Actor::spawn(None, LoaderActor, args).await.unwrap();
    // Two full epochs from a mid-epoch start.
    for n in start_at..start_at + 18 {
        let ex = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(5))).unwrap();
        assert_eq!(ex, example_at(&ds, 2, &tok, ChatTemplate::Plain, 24, 11, n));
    }
    // The queue refills to capacity while nobody reads.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rx.len(), 4);
    // Give the thread time to encode the next example and block on the full queue.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = ractor::call_t!(actor, LoaderMsg::Stats, 1000).unwrap();
    assert_eq!(stats.produced, 18 + 4);
    assert_eq!(stats.next_seq, start_at + 22);
    assert_eq!(stats.epochs, 3); // finished the passes ending at n = 9, 18 and 27

    let t = Instant::now();
    actor
        .stop_and_wait(None, Some(Duration::from_secs(2)))
        .await
        .unwrap();
    handle.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    // The producer thread is gone (sender dropped): the queue drains, then disconnects.
    let drained: Vec<Example> = rx.try_iter().collect();
    assert_eq!(drained.len(), 4);
    assert_eq!(drained[0].seq, start_at + 18);
    assert!(matches!(
        rx.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_stops_when_the_receiver_is_dropped() {
    let (args, rx) = loader_args(Arc::new(small_dataset(3)), 0, 2);
    let (_actor, handle) = Actor::spawn(None, LoaderActor, args).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(rx);
    tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .expect("loader did not stop after its receiver was dropped")
        .unwrap();
}

/// A supervisor that reports its children's termination events.
struct Watcher;

impl Actor for Watcher {
    type Msg = ();
    type State = tokio::sync::mpsc::UnboundedSender<String>;
    type Arguments = tokio::sync::mpsc::UnboundedSender<String>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let line = match event {
            SupervisionEvent::ActorFailed(_, e) => format!("failed: {e}"),
            SupervisionEvent::ActorTerminated(_, _, reason) => format!("terminated: {reason:?}"),
            _ => return Ok(()),
        };
        let _ = tx.send(line);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_failure_reaches_the_supervisor() {
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (watcher, watcher_handle) = Actor::spawn(None, Watcher, tx).await.unwrap();
    let (args, _rx) = loader_args(Arc::new(small_dataset(3)), 0, 2);
    let (loader, handle) = Actor::spawn_linked(None, LoaderActor, args, watcher.get_cell())
        .await
        .unwrap();
    // What the producer thread sends when it panics.
    loader.cast(LoaderMsg::Fail("boom".into())).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        event.starts_with("failed") && event.contains("boom"),
        "{event}"
    );
    tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .unwrap()
        .unwrap();
    watcher.stop(None);
    watcher_handle.await.unwrap();

    // An empty train split is refused at spawn.
    let (args, _rx) = loader_args(Arc::new(small_dataset(0)), 0, 2);
    assert!(Actor::spawn(None, LoaderActor, args).await.is_err());
}
