//! VM provisioning as a plan executed round after round, with injected cloud errors.
//!
//! Each round the plan compares the desired VM (exists, has a disk and a network
//! interface, runs) with what the simulated cloud reports and returns the tasks still
//! needed. Creating a VM returns two sub-tasks, the disk and the network interface, which
//! run after it succeeded. The cloud fails some calls on purpose; the executor tolerates
//! them (up to a number of consecutive errors), and the next round's plan repairs whatever
//! a failed round left half done. The plan returns no tasks once every VM runs, and the key
//! completes.
//!
//! Run with `cargo run --example vm_provisioner`. It finishes by itself in about a second.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyloop::flow::{BoxTask, Plan, PlanController, PlanExecutor, Task, TaskContext};
use keyloop::{BoxError, Engine, Key, KeyStatus, async_trait};

/// The simulated cloud. Every VM's API calls are counted; calls number 2, 7, 12, ... of
/// each VM fail with an injected error.
#[derive(Default)]
struct Cloud {
    inner: Mutex<CloudState>,
}

#[derive(Default)]
struct CloudState {
    vms: BTreeMap<String, Vm>,
    calls: BTreeMap<String, u32>,
    injected: BTreeMap<String, u32>,
    ips_given: u32,
}

#[derive(Debug, Default, Clone)]
struct Vm {
    disk_gb: Option<u32>,
    ip: Option<String>,
    running: bool,
}

impl Cloud {
    /// One API call for `vm`: a little latency, and sometimes an injected failure.
    async fn call<R>(
        &self,
        vm: &str,
        what: &str,
        f: impl FnOnce(&mut CloudState) -> Result<R, BoxError>,
    ) -> Result<R, BoxError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut cloud = self.inner.lock().unwrap();
        let n = cloud.calls.entry(vm.to_owned()).or_default();
        *n += 1;
        if *n % 5 == 2 {
            *cloud.injected.entry(vm.to_owned()).or_default() += 1;
            println!("  [{vm}] {what}: injected 503");
            return Err(format!("503 service unavailable ({what})").into());
        }
        f(&mut cloud)
    }

    async fn describe(&self, vm: &str) -> Result<Option<Vm>, BoxError> {
        self.call(vm, "describe", |c| Ok(c.vms.get(vm).cloned()))
            .await
    }
}

struct CreateVm {
    vm: String,
    cloud: Arc<Cloud>,
}

#[async_trait]
impl Task for CreateVm {
    fn name(&self) -> String {
        format!("create {}", self.vm)
    }

    async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        self.cloud
            .call(&self.vm, "create vm", |c| {
                c.vms.entry(self.vm.clone()).or_default();
                Ok(())
            })
            .await?;
        println!("  [{}] vm created", self.vm);
        Ok(vec![
            Box::new(CreateDisk {
                vm: self.vm.clone(),
                cloud: Arc::clone(&self.cloud),
            }),
            Box::new(AttachNic {
                vm: self.vm.clone(),
                cloud: Arc::clone(&self.cloud),
            }),
        ])
    }

    async fn post(&self, _cx: &TaskContext) -> Result<(), BoxError> {
        match self.cloud.describe(&self.vm).await? {
            Some(_) => Ok(()),
            None => Err("vm missing after create".into()),
        }
    }
}

struct CreateDisk {
    vm: String,
    cloud: Arc<Cloud>,
}

#[async_trait]
impl Task for CreateDisk {
    fn name(&self) -> String {
        format!("disk for {}", self.vm)
    }

    async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        self.cloud
            .call(&self.vm, "create disk", |c| {
                let vm = c.vms.get_mut(&self.vm).ok_or("no such vm")?;
                vm.disk_gb = Some(20);
                Ok(())
            })
            .await?;
        println!("  [{}] disk attached", self.vm);
        Ok(vec![])
    }
}

struct AttachNic {
    vm: String,
    cloud: Arc<Cloud>,
}

#[async_trait]
impl Task for AttachNic {
    fn name(&self) -> String {
        format!("network for {}", self.vm)
    }

    async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        let ip = self
            .cloud
            .call(&self.vm, "attach nic", |c| {
                let vm = c.vms.get_mut(&self.vm).ok_or("no such vm")?;
                c.ips_given += 1;
                let ip = format!("10.0.0.{}", 10 + c.ips_given);
                vm.ip = Some(ip.clone());
                Ok(ip)
            })
            .await?;
        println!("  [{}] network attached: {ip}", self.vm);
        Ok(vec![])
    }
}

struct StartVm {
    vm: String,
    cloud: Arc<Cloud>,
}

#[async_trait]
impl Task for StartVm {
    fn name(&self) -> String {
        format!("start {}", self.vm)
    }

    async fn pre(&self, _cx: &TaskContext) -> Result<(), BoxError> {
        let vm = self.cloud.describe(&self.vm).await?.ok_or("no such vm")?;
        if vm.disk_gb.is_none() || vm.ip.is_none() {
            return Err("vm is not ready to start".into());
        }
        Ok(())
    }

    async fn perform(&self, _cx: &TaskContext) -> Result<Vec<BoxTask>, BoxError> {
        self.cloud
            .call(&self.vm, "start", |c| {
                c.vms.get_mut(&self.vm).ok_or("no such vm")?.running = true;
                Ok(())
            })
            .await?;
        println!("  [{}] running", self.vm);
        Ok(vec![])
    }
}

/// Desired: the VM exists with a disk and a network interface, and runs.
struct VmPlan {
    vm: String,
    cloud: Arc<Cloud>,
}

#[async_trait]
impl Plan for VmPlan {
    async fn create(&self) -> Result<Vec<BoxTask>, BoxError> {
        let (vm, cloud) = (self.vm.clone(), Arc::clone(&self.cloud));
        let Some(actual) = self.cloud.describe(&self.vm).await? else {
            return Ok(vec![Box::new(CreateVm { vm, cloud })]);
        };
        let mut tasks: Vec<BoxTask> = vec![];
        if actual.disk_gb.is_none() {
            tasks.push(Box::new(CreateDisk {
                vm: vm.clone(),
                cloud: Arc::clone(&cloud),
            }));
        }
        if actual.ip.is_none() {
            tasks.push(Box::new(AttachNic {
                vm: vm.clone(),
                cloud: Arc::clone(&cloud),
            }));
        }
        if !actual.running {
            tasks.push(Box::new(StartVm { vm, cloud }));
        }
        Ok(tasks)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cloud = Arc::new(Cloud::default());
    let executor = PlanExecutor::builder()
        .round_interval(Duration::from_millis(20))
        .tolerate_errors(2)
        .task_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .build()?;
    let shared = Arc::clone(&cloud);
    let controller = PlanController::new(executor, move |key: &Key| {
        Ok(VmPlan {
            vm: key.to_string(),
            cloud: Arc::clone(&shared),
        })
    });

    let cluster = keyloop::memory::MemoryCluster::new();
    let engine = Engine::builder(cluster.coordinator(), controller)
        .node_name("provisioner")
        .start()
        .await?;
    let vms: Vec<String> = (1..=4).map(|i| format!("vm/{i}")).collect();
    for vm in &vms {
        engine.trigger(vm.as_str()).await?;
    }

    tokio::time::timeout(Duration::from_secs(20), async {
        for vm in &vms {
            while !matches!(
                engine.status(vm.as_str()).await,
                Ok(KeyStatus::NotRegistered)
            ) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await
    .map_err(|_| "timed out waiting for the vms")?;
    engine.shutdown().await;

    let cloud = cloud.inner.lock().unwrap();
    for (name, vm) in &cloud.vms {
        println!(
            "{name}: disk {:?} GB, ip {:?}, running {}, {} calls, {} injected errors",
            vm.disk_gb, vm.ip, vm.running, cloud.calls[name], cloud.injected[name]
        );
        assert!(vm.running && vm.disk_gb.is_some() && vm.ip.is_some());
    }
    assert_eq!(cloud.vms.len(), vms.len());
    assert!(
        cloud.injected.values().sum::<u32>() > 0,
        "errors were injected"
    );
    Ok(())
}
