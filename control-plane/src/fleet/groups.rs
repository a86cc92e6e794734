//! Groups: a label selector plus explicit members.

use fleet_protocol::{DeviceId, GroupName};
use serde::{Deserialize, Serialize};

use super::engine::event;
use super::{Fleet, FleetError, not_found};
use crate::store::{DeviceRecord, EventKind, GroupRecord, Labels, Write};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    #[serde(flatten)]
    pub group: GroupRecord,
    /// The devices in the group now.
    pub devices: Vec<DeviceId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateGroup {
    pub name: GroupName,
    #[serde(default)]
    pub selector: Labels,
    #[serde(default)]
    pub members: Vec<DeviceId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AddMembers {
    pub devices: Vec<DeviceId>,
}

impl Fleet {
    pub async fn groups(&self) -> Result<Vec<GroupView>, FleetError> {
        self.blocking(|i| {
            let devices = i.store.devices()?;
            Ok(i.store
                .groups()?
                .into_iter()
                .map(|g| group_view(g, &devices))
                .collect())
        })
        .await
    }

    pub async fn group(&self, name: GroupName) -> Result<GroupView, FleetError> {
        self.blocking(move |i| {
            let g = i
                .store
                .group(&name)?
                .ok_or_else(|| not_found("group", &name))?;
            Ok(group_view(g, &i.store.devices()?))
        })
        .await
    }

    pub async fn create_group(&self, req: CreateGroup) -> Result<GroupView, FleetError> {
        self.change(move |i, now| {
            if i.store.group(&req.name)?.is_some() {
                return Err(FleetError::GroupExists { group: req.name });
            }
            if req.selector.is_empty() && req.members.is_empty() {
                return Err(FleetError::GroupSpecEmpty);
            }
            let g = GroupRecord {
                name: req.name.clone(),
                selector: req.selector,
                members: req.members.into_iter().collect(),
                created_at: now,
                follows: Default::default(),
            };
            let msg = format!("selector {:?}, members {:?}", g.selector, g.members);
            i.store.commit(vec![
                Write::Group(g.clone()),
                event(EventKind::GroupCreated, &g.name, msg, now),
            ])?;
            Ok((group_view(g, &i.store.devices()?), vec![]))
        })
        .await
    }

    pub async fn add_members(
        &self,
        name: GroupName,
        req: AddMembers,
    ) -> Result<GroupView, FleetError> {
        self.change(move |i, now| {
            let mut g = i
                .store
                .group(&name)?
                .ok_or_else(|| not_found("group", &name))?;
            g.members.extend(req.devices.iter().cloned());
            let msg = format!("members added {:?}", req.devices);
            i.store.commit(vec![
                Write::Group(g.clone()),
                event(EventKind::GroupMembers, &name, msg, now),
            ])?;
            let changed = i.catch_up_commit(&req.devices, now)?;
            Ok((group_view(g, &i.store.devices()?), changed))
        })
        .await
    }
}

fn group_view(group: GroupRecord, devices: &[DeviceRecord]) -> GroupView {
    let members = devices
        .iter()
        .filter(|d| group.contains(d))
        .map(|d| d.id.clone())
        .collect();
    GroupView {
        group,
        devices: members,
    }
}
